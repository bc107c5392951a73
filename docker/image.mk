# The container image (docs/docker.md); included by the Makefile.
#   make image         build it as $(IMAGE) with docker, podman or buildah, whichever works here
#   make image-test    build it on a Debian stand-in base and run the Docker commands of docs/docker.md in it
#                      as a uid without a passwd entry, checking what they leave (docker/image_test.sh)

IMAGE   ?= dpstudy
# docker where its daemon answers, else podman, else buildah; ENGINE=podman etc. to choose
ENGINE  ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
             elif command -v podman >/dev/null 2>&1; then echo podman; \
             elif command -v buildah >/dev/null 2>&1; then echo buildah; fi)
# the commit the build context comes from: the image's org.opencontainers.image.revision label
VCS_REF ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# more flags for the build, e.g. --build-arg BASE_IMAGE=ubuntu:24.04
IMAGE_BUILD_FLAGS ?=

.PHONY: image image-test

image:
	@case "$(ENGINE)" in \
	    docker|podman|buildah) set -x; $(ENGINE) build $(IMAGE_BUILD_FLAGS) --build-arg VCS_REF="$(VCS_REF)" -t "$(IMAGE)" . ;; \
	    "") echo "make image: no container engine here (a docker daemon, podman or buildah)" >&2; exit 2 ;; \
	    *) echo "make image: ENGINE=$(ENGINE): docker, podman or buildah" >&2; exit 2 ;; \
	esac

image-test:
	docker/image_test.sh
