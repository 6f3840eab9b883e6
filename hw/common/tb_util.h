// tb_util.h -- testbench helpers (C simulation only, not synthesised): golden-vector files
// written by `python -m decoder_fpga.vectors`, a small deterministic RNG, reporting.
//
// Vector file (.grv, little-endian): "GRV1", u32 n_entries, then per entry:
//   char name[16] (NUL-padded), u32 dtype (1 int8, 2 uint8, 3 int16, 4 int32), u32 count,
//   count values.
#ifndef TB_UTIL_H
#define TB_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <map>
#include <string>
#include <vector>

struct tb_entry {
    uint32_t dtype = 0;
    std::vector<int64_t> v;  // values widened
};

typedef std::map<std::string, tb_entry> tb_vectors;

static bool tb_read_u32(FILE *f, uint32_t *out) {
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) return false;
    *out = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return true;
}

static bool tb_load(const std::string &path, tb_vectors *out) {
    FILE *f = fopen(path.c_str(), "rb");
    if (!f) return false;
    char magic[4];
    uint32_t n = 0;
    bool ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, "GRV1", 4) == 0 && tb_read_u32(f, &n);
    for (uint32_t e = 0; ok && e < n; ++e) {
        char name[17] = {0};
        uint32_t dtype = 0, count = 0;
        ok = fread(name, 1, 16, f) == 16 && tb_read_u32(f, &dtype) && tb_read_u32(f, &count);
        if (!ok || dtype < 1 || dtype > 4 || count > (1u << 26)) { ok = false; break; }
        const size_t size = dtype == 3 ? 2 : dtype == 4 ? 4 : 1;
        std::vector<unsigned char> raw(count * size);
        ok = fread(raw.data(), 1, raw.size(), f) == raw.size();
        tb_entry &t = (*out)[std::string(name)];
        t.dtype = dtype;
        t.v.resize(count);
        for (uint32_t i = 0; ok && i < count; ++i) {
            const unsigned char *p = &raw[i * size];
            if (dtype == 1) t.v[i] = (int8_t)p[0];
            else if (dtype == 2) t.v[i] = p[0];
            else if (dtype == 3) t.v[i] = (int16_t)(uint16_t)(p[0] | p[1] << 8);
            else t.v[i] = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        }
    }
    fclose(f);
    return ok;
}

template <typename T>
static std::vector<T> tb_get(const tb_vectors &v, const char *name) {
    std::vector<T> out;
    auto it = v.find(name);
    if (it != v.end())
        for (int64_t x : it->second.v) out.push_back((T)x);
    return out;
}

// The file names listed in a sha256sum manifest ("<hash>  <name>") that start with prefix.
static std::vector<std::string> tb_manifest(const std::string &dir, const char *prefix) {
    std::vector<std::string> names;
    FILE *f = fopen((dir + "/MANIFEST.sha256").c_str(), "r");
    if (!f) return names;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char hash[128], name[256];
        if (sscanf(line, "%127s %255s", hash, name) == 2 && strncmp(name, prefix, strlen(prefix)) == 0)
            names.push_back(name);
    }
    fclose(f);
    return names;
}

// splitmix64: deterministic, identical everywhere.
struct tb_rng {
    uint64_t s;
    explicit tb_rng(uint64_t seed) : s(seed) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    int64_t range(int64_t lo, int64_t hi) { return lo + (int64_t)(next() % (uint64_t)(hi - lo + 1)); }  // [lo, hi]
};

static int tb_failures = 0;

#define TB_CHECK(cond, ...)                      \
    do {                                         \
        if (!(cond)) {                           \
            ++tb_failures;                       \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                 \
            printf("\n");                        \
        }                                        \
    } while (0)

#endif
