"""`import codec` stays light: no torch, grpc or pynq until a feature that needs them runs."""

import subprocess
import sys


def test_codec_imports_no_heavy_dependencies():
    code = (
        "import sys, codec, codec.cli, codec.decoder, codec.generators, codec.motion, encoder.encoder;"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'grpc', 'pynq'});"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
