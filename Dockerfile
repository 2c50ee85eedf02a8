# The one `mochi` image, for every role (`mochi up`, `gateway`, `coordinator`, `gpu-node`),
# and its CUDA variant for the GPU nodes. Built by scripts/image.sh from a root file system
# it stages under target/image: the binary, the C and C++ runtime libraries it links (found
# by ldd on this machine), the CA certificates and nats-server for the all-in-one mode.
# FROM scratch: nothing in the image that the binary does not load, no shell, no package
# manager; nothing is pulled from a registry.
#
#   `--target cpu`: the binary built without CUDA;
#   `--target cuda` (scripts/image.sh --cuda): the binary built with `--features cuda`
#   (tools/build_cuda.sh) and the CUDA 13.0 runtime libraries from PyPI's wheels under
#   /usr/local/cuda/lib64. The driver's libcuda.so.1 comes from the host at run time (the
#   NVIDIA container toolkit mounts it); kernels are sm_90: H100/H200, driver 580 or later.
FROM scratch AS base

ARG VERSION=unknown
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="mochi-serve" \
      org.opencontainers.image.description="Text-to-video with Genmo Mochi-1: one binary, the role is a subcommand" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY rootfs/ /
COPY --chown=65532:65532 data/ /data/

# Non-root (the `mochi` user of rootfs/etc/passwd); the data directory is its only
# writable place besides /tmp.
USER 65532:65532
WORKDIR /data
ENV MOCHI_NATS_SERVER=/usr/local/bin/nats-server \
    HOME=/data
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mochi"]
CMD ["up", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]

# The stages after the target are not built (the legacy builder builds every stage up to
# it): `cpu` first, so that building it leaves no `cuda` layers on the base.
FROM base AS cpu

FROM base AS cuda
LABEL org.opencontainers.image.description="Text-to-video with Genmo Mochi-1, CUDA 13.0 build (sm_90: H100/H200; NVIDIA driver 580 or later on the host)"
COPY cuda/ /usr/local/cuda/lib64/
# CUDA_DEVICE_ORDER: CUDA numbers the GPUs as NVML does, so each slot's NVML figures are its own.
ENV LD_LIBRARY_PATH=/usr/local/cuda/lib64 \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
