/* strataml's C API: run one compiled model with no Python.
 *
 * A library made by `strataml compile MODEL --emit c-lib -o DIR` (DIR/libstrataml_model.so)
 * holds the model's code and its plan; its weights come from DIR/strataml_model.weights (a
 * file or bytes in memory), checked against the size and checksum the library was built
 * with. Every call that can fail takes
 * an error buffer (may be NULL) and writes one line saying what went wrong.
 *
 * Thread safety: calls on one model take turns (a model has one scratch arena); distinct
 * models run concurrently. The library depends on libc, libm and pthreads only.
 */
#ifndef STRATAML_MODEL_H
#define STRATAML_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define STRATAML_C_API_VERSION 1

typedef struct strataml_model strataml_model;

/* Create a model from its weights file, or from weights in memory (copied: the caller may
 * free them after). NULL on failure, with the reason in `error`. */
strataml_model *strataml_create(const char *weights_path, char *error, size_t error_size);
strataml_model *strataml_create_from_memory(const void *weights, size_t size, char *error,
                                            size_t error_size);
void strataml_destroy(strataml_model *model);

/* The model's interface: names, dtypes ("float32", "int64", ...), ranks, shapes, bytes. */
int strataml_num_inputs(const strataml_model *model);
int strataml_num_outputs(const strataml_model *model);
const char *strataml_input_name(const strataml_model *model, int index);
const char *strataml_output_name(const strataml_model *model, int index);
const char *strataml_input_dtype(const strataml_model *model, int index);
const char *strataml_output_dtype(const strataml_model *model, int index);
int strataml_input_rank(const strataml_model *model, int index);
int strataml_output_rank(const strataml_model *model, int index);
const int64_t *strataml_input_shape(const strataml_model *model, int index);
const int64_t *strataml_output_shape(const strataml_model *model, int index);
size_t strataml_input_bytes(const strataml_model *model, int index);
size_t strataml_output_bytes(const strataml_model *model, int index);

/* Run once: `inputs[i]` points at input i's bytes (C order, its dtype and shape), and
 * `outputs[k]` at room for output k. Inputs are never modified. 0 on success; otherwise
 * nonzero with the reason in `error`. */
int strataml_run(strataml_model *model, const void *const *inputs, void *const *outputs,
                 char *error, size_t error_size);

/* Threads for parallel loops (default: STRATAML_NUM_THREADS, else the count the model was
 * compiled for). */
void strataml_set_num_threads(strataml_model *model, int threads);

const char *strataml_version(void);

#ifdef __cplusplus
}
#endif
#endif /* STRATAML_MODEL_H */
