/* Run a strataml C library with no Python (build line: README.md here):
 *
 *     run_model DIR [IN1.npy ...] [--out OUTDIR]
 *
 * DIR is what `strataml compile MODEL --emit c-lib -o DIR` wrote; its weights are
 * DIR/strataml_model.weights. Inputs are .npy files in the model's input order, checked
 * against its dtypes and shapes (with none given, each input is filled with a fixed
 * pattern). Output k is written to OUTDIR/<its name>.npy. Prints the model's interface and
 * a summary of the first output. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strataml_model.h"

#define MAX_INPUTS 256

/* numpy's descr for each dtype name the model may use (little-endian hosts). */
static const char *descr_of(const char *dtype) {
    static const char *table[][2] = {
        {"float32", "<f4"}, {"float64", "<f8"}, {"float16", "<f2"}, {"int8", "|i1"},
        {"int16", "<i2"},   {"int32", "<i4"},   {"int64", "<i8"},   {"uint8", "|u1"},
        {"uint16", "<u2"},  {"uint32", "<u4"},  {"uint64", "<u8"},  {"bool", "|b1"}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i][0], dtype) == 0) return table[i][1];
    return NULL;
}

static void shape_text(char *out, size_t size, int rank, const int64_t *shape) {
    size_t n = (size_t)snprintf(out, size, "(");
    for (int d = 0; d < rank && n < size; d++)
        n += (size_t)snprintf(out + n, size - n, rank == 1 ? "%lld," : d ? ", %lld" : "%lld",
                              (long long)shape[d]);
    if (n < size) snprintf(out + n, size - n, ")");
}

/* Reads an .npy file's data into `into` after checking its header says exactly `dtype` and
 * `shape` in C order. 0 on success. */
static int read_npy(const char *path, const char *dtype, int rank, const int64_t *shape,
                    void *into, size_t bytes) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return fprintf(stderr, "run_model: cannot open %s\n", path), 1;
    unsigned char magic[10];
    int ok = fread(magic, 1, 10, f) == 10 && memcmp(magic, "\x93NUMPY", 6) == 0;
    size_t header_len = 0;
    if (ok && magic[6] == 1) {
        header_len = (size_t)magic[8] | (size_t)magic[9] << 8;
    } else if (ok && (magic[6] == 2 || magic[6] == 3)) {
        unsigned char more[2];
        ok = fread(more, 1, 2, f) == 2;
        header_len = (size_t)magic[8] | (size_t)magic[9] << 8 | (size_t)more[0] << 16 |
                     (size_t)more[1] << 24;
    } else {
        ok = 0;
    }
    char *header = ok && header_len < (1 << 20) ? calloc(header_len + 1, 1) : NULL;
    ok = header != NULL && fread(header, 1, header_len, f) == header_len;
    if (!ok) {
        free(header);
        fclose(f);
        return fprintf(stderr, "run_model: %s is not an .npy file\n", path), 1;
    }
    /* The header is a Python dict literal: compare it, spaces removed, with the fields we
     * expect (numpy writes 'descr', 'fortran_order' and 'shape'). */
    char want_shape[512], want[3][560];
    shape_text(want_shape, sizeof want_shape, rank, shape);
    snprintf(want[0], sizeof want[0], "'descr':'%s'", descr_of(dtype));
    snprintf(want[1], sizeof want[1], "'fortran_order':False");
    snprintf(want[2], sizeof want[2], "'shape':%s", want_shape);
    char *compact = calloc(header_len + 1, 1);
    size_t w = 0;
    for (size_t r = 0; r < header_len && header[r]; r++)
        if (header[r] != ' ') compact[w++] = header[r];
    for (int q = 0; q < 3; q++) {
        char *spaceless = want[q];
        size_t m = 0;
        for (size_t r = 0; spaceless[r]; r++)
            if (spaceless[r] != ' ') spaceless[m++] = spaceless[r];
        spaceless[m] = '\0';
        ok = ok && strstr(compact, spaceless) != NULL;
    }
    free(compact);
    if (!ok) {
        fprintf(stderr, "run_model: %s holds %s; the model takes a C-order %s array of shape "
                "%s\n", path, header, dtype, want_shape);
        free(header);
        fclose(f);
        return 1;
    }
    free(header);
    size_t got = fread(into, 1, bytes, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != bytes || extra)
        return fprintf(stderr, "run_model: %s: expected %zu bytes of data\n", path, bytes), 1;
    return 0;
}

static int write_npy(const char *path, const char *dtype, int rank, const int64_t *shape,
                     const void *data, size_t bytes) {
    char shape_str[512], header[640];
    shape_text(shape_str, sizeof shape_str, rank, shape);
    int n = snprintf(header, sizeof header,
                     "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                     descr_of(dtype), shape_str);
    size_t total = 10 + (size_t)n + 1, padded = (total + 63) / 64 * 64;
    FILE *f = fopen(path, "wb");
    if (f == NULL) return fprintf(stderr, "run_model: cannot write %s\n", path), 1;
    unsigned char magic[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    size_t header_len = padded - 10;
    magic[8] = (unsigned char)(header_len & 0xff);
    magic[9] = (unsigned char)(header_len >> 8);
    fwrite(magic, 1, 10, f);
    fwrite(header, 1, (size_t)n, f);
    for (size_t p = 10 + (size_t)n; p < padded - 1; p++) fputc(' ', f);
    fputc('\n', f);
    int ok = fwrite(data, 1, bytes, f) == bytes;
    return fclose(f) != 0 || !ok ? (fprintf(stderr, "run_model: cannot write %s\n", path), 1)
                                 : 0;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *out_dir = NULL, *files[MAX_INPUTS];
    int n_files = 0;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--out") == 0 && a + 1 < argc) out_dir = argv[++a];
        else if (dir == NULL) dir = argv[a];
        else if (n_files < MAX_INPUTS) files[n_files++] = argv[a];
    }
    if (dir == NULL) {
        fprintf(stderr, "usage: %s DIR [IN1.npy ...] [--out OUTDIR]\n", argv[0]);
        return 2;
    }
    char path[4096], error[512];
    snprintf(path, sizeof path, "%s/strataml_model.weights", dir);
    strataml_model *model = strataml_create(path, error, sizeof error);
    if (model == NULL) return fprintf(stderr, "%s\n", error), 1;

    int n_in = strataml_num_inputs(model), n_out = strataml_num_outputs(model);
    if (n_files != 0 && n_files != n_in) {
        fprintf(stderr, "run_model: the model takes %d inputs, %d files given\n", n_in, n_files);
        return 2;
    }
    void **inputs = calloc((size_t)n_in + 1, sizeof *inputs);
    void **outputs = calloc((size_t)n_out + 1, sizeof *outputs);
    char shape[512];
    for (int i = 0; i < n_in; i++) {
        const char *dtype = strataml_input_dtype(model, i);
        int rank = strataml_input_rank(model, i);
        const int64_t *dims = strataml_input_shape(model, i);
        shape_text(shape, sizeof shape, rank, dims);
        printf("input %s: %s %s\n", strataml_input_name(model, i), dtype, shape);
        size_t bytes = strataml_input_bytes(model, i);
        unsigned char *data = inputs[i] = malloc(bytes ? bytes : 1);
        if (n_files) {
            if (read_npy(files[i], dtype, rank, dims, data, bytes)) return 1;
        } else {
            for (size_t b = 0; b < bytes; b++) data[b] = (unsigned char)(b * 7 % 61);
        }
    }
    for (int k = 0; k < n_out; k++) {
        shape_text(shape, sizeof shape, strataml_output_rank(model, k),
                   strataml_output_shape(model, k));
        printf("output %s: %s %s\n", strataml_output_name(model, k),
               strataml_output_dtype(model, k), shape);
        size_t bytes = strataml_output_bytes(model, k);
        outputs[k] = malloc(bytes ? bytes : 1);
    }
    if (strataml_run(model, (const void *const *)inputs, outputs, error, sizeof error))
        return fprintf(stderr, "%s\n", error), 1;
    for (int k = 0; k < n_out && out_dir != NULL; k++) {
        char name[256];
        snprintf(name, sizeof name, "%s", strataml_output_name(model, k));
        for (char *c = name; *c; c++)
            if (*c == '/' || *c == '\\') *c = '_';
        snprintf(path, sizeof path, "%s/%s.npy", out_dir, name);
        if (write_npy(path, strataml_output_dtype(model, k), strataml_output_rank(model, k),
                      strataml_output_shape(model, k), outputs[k],
                      strataml_output_bytes(model, k)))
            return 1;
    }
    if (n_out > 0 && strcmp(strataml_output_dtype(model, 0), "float32") == 0) {
        const float *y = outputs[0];
        size_t n = strataml_output_bytes(model, 0) / sizeof(float);
        double sum = 0;
        for (size_t j = 0; j < n; j++) sum += y[j];
        printf("output %s: %zu values, first %g, sum %g\n", strataml_output_name(model, 0), n,
               n ? y[0] : 0.0, sum);
    }
    for (int i = 0; i < n_in; i++) free(inputs[i]);
    for (int k = 0; k < n_out; k++) free(outputs[k]);
    free(inputs);
    free(outputs);
    strataml_destroy(model);
    return 0;
}
