#!/usr/bin/env bash
# Builds the container image and tests it: start, HEALTHCHECK healthy, one Explain, drain on
# `docker stop` with exit 0. Needs a running Docker engine (DOCKER_HOST), and, as root, debootstrap
# (Debian's package) for the two bases when no registry is reachable: set IMPORT_BASES=1 to build
# them from Debian root filesystems (`debootstrap` + `docker import`); otherwise the Dockerfile's
# default bases are pulled. `make image-test` runs it; not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-explainserve:test}
WORK=${WORK:-.make/image}
mkdir -p "$WORK"
args=()
if [ "${IMPORT_BASES:-0}" = 1 ]; then
    # Debian 13 (Rust 1.85) to build, Debian 12 (Python 3.11) to run.
    for spec in "trixie:local/debian:trixie:ca-certificates" \
                "bookworm:local/debian-python:3.11-bookworm:python3,python3-venv,ca-certificates"; do
        IFS=: read -r suite repo tag include <<< "$spec"
        if ! docker image inspect "$repo:$tag" > /dev/null 2>&1; then
            rm -rf "$WORK/$suite"
            debootstrap --variant=minbase --include="$include" "$suite" "$WORK/$suite" \
                http://deb.debian.org/debian
            tar -C "$WORK/$suite" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$repo:$tag"
            rm -rf "${WORK:?}/$suite"
        fi
    done
    args+=(--build-arg BUILD_IMAGE=local/debian:trixie
           --build-arg BASE_IMAGE=local/debian-python:3.11-bookworm)
fi
if [ -n "${CA_BUNDLE:-}" ]; then
    args+=(--secret "id=ca,src=$CA_BUNDLE")
fi
DOCKER_BUILDKIT=1 docker build --network host "${args[@]}" -t "$TAG" .

# No network at all: the server listens inside the container; the checks run there too.
name="explainserve-test-$$"
docker run -d --name "$name" --network none "$TAG" > /dev/null
trap 'docker rm -f "$name" > /dev/null 2>&1 || true' EXIT
for _ in $(seq 1 120); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$name")
    [ "$health" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || { docker logs "$name"; exit 1; }
    sleep 2
done
echo "health: $health"
[ "$health" = healthy ]
docker exec "$name" id -u | grep -qx 10001
docker exec "$name" python -c '
import grpc
from explainserve.v1 import explain_pb2 as pb, explain_pb2_grpc
stub = explain_pb2_grpc.ExplainServiceStub(grpc.insecure_channel("127.0.0.1:50051"))
reply = stub.Explain(pb.ExplainRequest(model="minilm-sentiment",
    inputs=[pb.Input(text="The food was cold and the staff were rude.")],
    occlusion=pb.Occlusion(), granularity=pb.GRANULARITY_WORD), timeout=120)
e = reply.explanations[0]
print("Explain:", " ".join(f"{u.text}={s:+.3f}" for u, s in zip(e.units, e.scores.values)))
assert [u.text for u in e.units][-2:] == ["rude", "."], e.units
assert max(e.scores.values) == e.scores.values[-2]  # "rude" drives the negative label
'
docker stop -t 60 "$name" > /dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
echo "exit code after docker stop: $code"
[ "$code" = 0 ]
docker images "$TAG" --format 'image: {{.Repository}}:{{.Tag}} {{.Size}}'
