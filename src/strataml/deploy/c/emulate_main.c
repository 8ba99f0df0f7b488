/* The driver strataml uses to run a cross-built C library under qemu-user from Python
 * (deploy/emulate.py): raw bytes in, raw bytes out, nothing printed unless something fails.
 *
 *     emulate_main WEIGHTS IN_0.bin ... IN_n-1.bin OUT_DIR     (writes OUT_DIR/out_K.bin) */
#include <stdio.h>
#include <stdlib.h>

#include "strataml_model.h"

static int transfer(const char *path, void *data, size_t bytes, int writing) {
    FILE *f = fopen(path, writing ? "wb" : "rb");
    if (f == NULL) return fprintf(stderr, "emulate_main: cannot open %s\n", path), 1;
    size_t done = writing ? fwrite(data, 1, bytes, f) : fread(data, 1, bytes, f);
    fclose(f);
    if (done != bytes) return fprintf(stderr, "emulate_main: %s: short transfer\n", path), 1;
    return 0;
}

int main(int argc, char **argv) {
    char error[512], path[4096];
    if (argc < 3) return fprintf(stderr, "usage: emulate_main WEIGHTS IN... OUT_DIR\n"), 2;
    strataml_model *model = strataml_create(argv[1], error, sizeof error);
    if (model == NULL) return fprintf(stderr, "%s\n", error), 1;
    int n_in = strataml_num_inputs(model), n_out = strataml_num_outputs(model);
    if (argc != 3 + n_in)
        return fprintf(stderr, "emulate_main: the model takes %d inputs\n", n_in), 2;
    void **inputs = calloc((size_t)n_in + 1, sizeof *inputs);
    void **outputs = calloc((size_t)n_out + 1, sizeof *outputs);
    for (int i = 0; i < n_in; i++) {
        size_t bytes = strataml_input_bytes(model, i);
        inputs[i] = malloc(bytes ? bytes : 1);
        if (transfer(argv[2 + i], inputs[i], bytes, 0)) return 1;
    }
    for (int k = 0; k < n_out; k++) {
        size_t bytes = strataml_output_bytes(model, k);
        outputs[k] = malloc(bytes ? bytes : 1);
    }
    if (strataml_run(model, (const void *const *)inputs, outputs, error, sizeof error))
        return fprintf(stderr, "%s\n", error), 1;
    for (int k = 0; k < n_out; k++) {
        snprintf(path, sizeof path, "%s/out_%d.bin", argv[argc - 1], k);
        if (transfer(path, outputs[k], strataml_output_bytes(model, k), 1)) return 1;
    }
    strataml_destroy(model);
    return 0;
}
