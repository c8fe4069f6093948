// Quantizes one f32 weight matrix with a ggml type and dequantizes it back: the weights that
// llama.cpp's matmul would see after `llama-quantize` stored this tensor in that type.
//
//   ggml_roundtrip TYPE                                      prints: TYPE bpw requires_imatrix
//   ggml_roundtrip TYPE ROWS COLS IN.f32 OUT.f32 [IMATRIX.f32]
//
// IN and OUT are raw little-endian f32, row-major [ROWS, COLS] (a linear's [out, in]); IMATRIX
// is COLS f32 values, the mean of x_j^2 over calibration tokens for input column j. TYPE is a
// ggml type name as ggml_type_name spells it, case-insensitive (q4_K, iq2_xxs, ...).
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "ggml.h"

static enum ggml_type type_by_name(const char * name) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        if (ggml_blck_size(t) > 0 && ggml_type_name(t) && strcasecmp(ggml_type_name(t), name) == 0) {
            return (enum ggml_type) t;
        }
    }
    fprintf(stderr, "unknown ggml type %s\n", name);
    exit(2);
}

static float * read_f32(const char * path, size_t n) {
    float * data = malloc(n * sizeof(float));
    FILE * f = fopen(path, "rb");
    if (!f || fread(data, sizeof(float), n, f) != n) {
        fprintf(stderr, "%s: cannot read %zu f32 values\n", path, n);
        exit(1);
    }
    fclose(f);
    return data;
}

int main(int argc, char ** argv) {
    if (argc != 2 && argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s TYPE [ROWS COLS IN.f32 OUT.f32 [IMATRIX.f32]]\n", argv[0]);
        return 2;
    }
    const enum ggml_type type = type_by_name(argv[1]);
    if (argc == 2) {
        printf("%s %.6f %d\n", ggml_type_name(type),
               8.0 * ggml_type_size(type) / ggml_blck_size(type), ggml_quantize_requires_imatrix(type));
        return 0;
    }
    const int64_t rows = atoll(argv[2]), cols = atoll(argv[3]);
    if (cols % ggml_blck_size(type) != 0) {
        fprintf(stderr, "%s: rows of %lld weights are not a multiple of its block of %lld\n",
                ggml_type_name(type), (long long) cols, (long long) ggml_blck_size(type));
        return 1;
    }
    const float * src = read_f32(argv[4], rows * cols);
    const float * imatrix = argc == 7 ? read_f32(argv[6], cols) : NULL;
    if (ggml_quantize_requires_imatrix(type) && !imatrix) {
        fprintf(stderr, "%s requires an importance matrix\n", ggml_type_name(type));
        return 1;
    }
    void * packed = malloc(ggml_row_size(type, cols) * rows);
    const size_t bytes = ggml_quantize_chunk(type, src, packed, 0, rows, cols, imatrix);
    float * out = malloc(rows * cols * sizeof(float));
    ggml_get_type_traits(type)->to_float(packed, out, rows * cols);
    FILE * f = fopen(argv[5], "wb");
    if (!f || fwrite(out, sizeof(float), rows * cols, f) != (size_t) (rows * cols)) {
        fprintf(stderr, "%s: cannot write\n", argv[5]);
        return 1;
    }
    fclose(f);
    ggml_quantize_free();
    printf("%zu\n", bytes);
    return 0;
}
