/* Run a strataml C library with no Python:
 *
 *     run_model MODEL.weights [INPUT.bin ...] [-o OUTDIR]
 *
 * Prints the model's inputs and outputs, reads each input's raw bytes (C order, its dtype)
 * from the files given, or fills it with a fixed pattern when none is given, runs the model
 * once and writes output k's raw bytes to OUTDIR/output_k.bin (when -o is given). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strataml.h"

static void describe(const char *what, const char *name, const char *dtype, int rank,
                     const int64_t *shape) {
    printf("%s %s: %s [", what, name, dtype);
    for (int d = 0; d < rank; d++) printf(d ? ", %lld" : "%lld", (long long)shape[d]);
    printf("]\n");
}

static int read_file(const char *path, void *into, size_t bytes) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return fprintf(stderr, "cannot open %s\n", path), 1;
    size_t got = fread(into, 1, bytes, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != bytes || extra)
        return fprintf(stderr, "%s: expected exactly %zu bytes\n", path, bytes), 1;
    return 0;
}

int main(int argc, char **argv) {
    const char *out_dir = NULL;
    const char *files[64];
    int n_files = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.weights [INPUT.bin ...] [-o OUTDIR]\n", argv[0]);
        return 2;
    }
    for (int a = 2; a < argc; a++) {
        if (strcmp(argv[a], "-o") == 0 && a + 1 < argc) out_dir = argv[++a];
        else if (n_files < 64) files[n_files++] = argv[a];
    }
    char error[512];
    strataml_model *model = strataml_create(argv[1], error, sizeof error);
    if (model == NULL) return fprintf(stderr, "%s\n", error), 1;

    int n_in = strataml_num_inputs(model), n_out = strataml_num_outputs(model);
    if (n_files != 0 && n_files != n_in) {
        fprintf(stderr, "the model takes %d inputs, %d files given\n", n_in, n_files);
        return 2;
    }
    void **inputs = calloc((size_t)n_in + 1, sizeof *inputs);
    void **outputs = calloc((size_t)n_out + 1, sizeof *outputs);
    for (int i = 0; i < n_in; i++) {
        describe("input", strataml_input_name(model, i), strataml_input_dtype(model, i),
                 strataml_input_rank(model, i), strataml_input_shape(model, i));
        size_t bytes = strataml_input_bytes(model, i);
        unsigned char *data = inputs[i] = malloc(bytes ? bytes : 1);
        if (n_files) {
            if (read_file(files[i], data, bytes)) return 1;
        } else {
            for (size_t b = 0; b < bytes; b++) data[b] = (unsigned char)(b * 7 % 61);
        }
    }
    for (int k = 0; k < n_out; k++) {
        describe("output", strataml_output_name(model, k), strataml_output_dtype(model, k),
                 strataml_output_rank(model, k), strataml_output_shape(model, k));
        size_t bytes = strataml_output_bytes(model, k);
        outputs[k] = malloc(bytes ? bytes : 1);
    }
    if (strataml_run(model, (const void *const *)inputs, outputs, error, sizeof error))
        return fprintf(stderr, "%s\n", error), 1;
    for (int k = 0; k < n_out && out_dir != NULL; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/output_%d.bin", out_dir, k);
        FILE *f = fopen(path, "wb");
        if (f == NULL) return fprintf(stderr, "cannot write %s\n", path), 1;
        fwrite(outputs[k], 1, strataml_output_bytes(model, k), f);
        fclose(f);
    }
    if (strcmp(strataml_output_dtype(model, 0), "float32") == 0) {
        const float *y = outputs[0];
        size_t n = strataml_output_bytes(model, 0) / sizeof(float);
        double sum = 0;
        for (size_t j = 0; j < n; j++) sum += y[j];
        printf("output 0: %zu values, first %g, sum %g\n", n, n ? y[0] : 0.0, sum);
    }
    for (int i = 0; i < n_in; i++) free(inputs[i]);
    for (int k = 0; k < n_out; k++) free(outputs[k]);
    free(inputs);
    free(outputs);
    strataml_destroy(model);
    return 0;
}
