/*
 * A stand-in for the NVIDIA driver's libnvidia-ml.so.1, for tests on machines without a GPU:
 * the few NVML entry points the GPU node calls, answering for four identical GPUs. GPU i
 * reports (37 + i) % utilisation and (2 + i) GiB of 80 GiB in use, plus the number of bytes
 * written in FAKE_NVML_DIR/extra_used_bytes while that file exists (a test holding memory
 * "in use" after a job). Types and return codes follow nvml.h.
 */
#include <stdio.h>
#include <string.h>

#define FAKE_GPUS 4u
#define GIB (1024ull * 1024ull * 1024ull)

typedef int nvmlReturn_t;
enum { NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
       NVML_ERROR_INSUFFICIENT_SIZE = 7, NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25 };

struct fake_device { unsigned int index; };
typedef struct fake_device *nvmlDevice_t;

typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

static struct fake_device devices[FAKE_GPUS];
/* nvmlInit calls not yet matched by nvmlShutdown, as NVML counts them. */
static int initialised;

/* The bytes a test asks to add to every GPU's memory in use (0 without the file). */
static unsigned long long extra_used_bytes(void) {
#ifdef FAKE_NVML_DIR
    FILE *file = fopen(FAKE_NVML_DIR "/extra_used_bytes", "r");
    if (file == NULL) return 0;
    unsigned long long extra = 0;
    if (fscanf(file, "%llu", &extra) != 1) extra = 0;
    fclose(file);
    return extra;
#else
    return 0;
#endif
}

static nvmlReturn_t device_index(nvmlDevice_t device, unsigned int *index) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (device < devices || device >= devices + FAKE_GPUS) return NVML_ERROR_INVALID_ARGUMENT;
    *index = device->index;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_text(const char *text, char *out, unsigned int length) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    for (unsigned int i = 0; i < FAKE_GPUS; i++) devices[i].index = i;
    initialised++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised--;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy_text("580.65.06", version, length);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = FAKE_GPUS;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (index >= FAKE_GPUS || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    unsigned int index;
    nvmlReturn_t status = device_index(device, &index);
    if (status != NVML_SUCCESS) return status;
    char text[64];
    snprintf(text, sizeof text, "GPU-fa4e0000-0000-0000-0000-%012u", index);
    return copy_text(text, uuid, length);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    unsigned int index;
    nvmlReturn_t status = device_index(device, &index);
    if (status != NVML_SUCCESS) return status;
    return copy_text("NVIDIA H100 80GB HBM3 (fake)", name, length);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates) {
    unsigned int index;
    nvmlReturn_t status = device_index(device, &index);
    if (status != NVML_SUCCESS) return status;
    if (rates == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    rates->gpu = 37 + index;
    rates->memory = 20;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    unsigned int index;
    nvmlReturn_t status = device_index(device, &index);
    if (status != NVML_SUCCESS) return status;
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if ((memory->version >> 24) != 2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = 80 * GIB;
    memory->reserved = 0;
    memory->used = (2ull + index) * GIB + extra_used_bytes();
    if (memory->used > memory->total) memory->used = memory->total;
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}
