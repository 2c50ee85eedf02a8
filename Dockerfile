# The one `mochi` image, for every role (`mochi up`, `gateway`, `coordinator`, `gpu-node`).
# Built by scripts/image.sh from a root file system it stages under target/image: the
# binary, the C and C++ runtime libraries it links (found by ldd on this machine), and
# nats-server for the all-in-one mode. FROM scratch: nothing in the image that the binary
# does not load, no shell, no package manager; nothing is pulled from a registry.
FROM scratch

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
