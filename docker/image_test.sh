#!/usr/bin/env bash
# make image-test: build the image for real and run in it, as a user would, what docs/docker.md's Docker
# section tells them to run, on the CPU. No Docker daemon needed: buildah builds (through `make
# image`) and runs the container; Docker Hub is not needed either: the base is a stand-in, a Debian
# bookworm root filesystem made with mmdebstrap from the Debian archive (cached in build/image-test/
# while the Dockerfile's apt package list is unchanged), passed as the Dockerfile's BASE_IMAGE.
#
# Needs root (a fresh CI machine is), the Debian archive and PyPI; installs buildah, mmdebstrap and
# uidmap with apt-get where missing. Images and containers live in a storage of their own under
# $IMAGE_TEST_TMP (default /var/tmp; 26 GB at the peak, during the image commit), removed at the end.
#
# What runs, as uid:gid $IMAGE_TEST_USER (default 4242:4242: not the image's user, no passwd entry),
# through the image's own ENTRYPOINT, like `docker run --rm --user 4242:4242 -v "$PWD":/workspace/dpstudy`:
#   dpstudy --help; a tree without .git (refused, untouched); `dvc exp run -S preset=quick` on a fresh
#   git clone of this repository (HEAD, not uncommitted changes), then the same command again, then
#   `dvc metrics show --md`.
# Checked: results/REPORT.md written; mlflow.db in the checkout holds the runs, all FINISHED; every
# file in the checkout belongs to the calling uid:gid; params.yaml is byte-identical to the committed
# one; the second run re-ran no stage and changed no result.
#   IMAGE_TEST_KEEP=1      keep the storage, the image and the checkout (paths printed at the end)
#   IMAGE_TEST_STORE=<dir> reuse a kept storage and its image (no rebuild): to debug the runs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUN_AS="${IMAGE_TEST_USER:-4242:4242}"
TMP_PARENT="${IMAGE_TEST_TMP:-/var/tmp}"
KEEP="${IMAGE_TEST_KEEP:-0}"
CACHE="$ROOT/build/image-test"
SUITE=bookworm
MIRROR="http://deb.debian.org/debian"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
IMAGE=localhost/dpstudy-image-test:latest
BASE=localhost/dpstudy-standin-$SUITE:latest
WORKDIR_IN=/workspace/dpstudy

T0=$(date +%s)
PHASES=()
phase_start=$T0
phase_name=""
step() {  # close the previous phase (its seconds go in the summary), open the next
    local now
    now=$(date +%s)
    [[ -z "$phase_name" ]] || PHASES+=("$(printf '%5ds  %s' $((now - phase_start)) "$phase_name")")
    phase_name="$1"
    phase_start=$now
    printf '\n==> [%s, +%ds] %s\n' "$(date +%H:%M:%S)" $((now - T0)) "$1"
}
FAILED=0
ok() { printf '    ok: %s\n' "$*"; }
bad() { printf '    FAILED: %s\n' "$*" >&2; FAILED=$((FAILED + 1)); }
die() { printf 'image-test: %s\n' "$*" >&2; exit 1; }
stamp() { local line="$1"; printf '    [%s] %s\n' "$(date +%H:%M:%S)" "${line:0:140}"; }

[[ "$(id -u)" -eq 0 ]] || die "needs root (buildah's chroot isolation, a checkout chowned to $RUN_AS): sudo make image-test"
uid="${RUN_AS%%:*}"
gid="${RUN_AS##*:}"

# ------------------------------------------------------------------------------------------------
step "tools: buildah, mmdebstrap (apt-get where missing)"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v newuidmap >/dev/null || missing+=(uidmap)
command -v git >/dev/null || missing+=(git)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    echo "    installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
buildah --version
mmdebstrap --version

# ------------------------------------------------------------------------------------------------
step "stand-in base: Debian $SUITE root filesystem (mmdebstrap, cached in build/image-test/)"
# The packages the Dockerfile installs with apt-get, read from it, so the cache follows that line
# (the Dockerfile's own apt-get then finds them installed).
packages="$(sed -n '/apt-get install/,/&&/p' "$ROOT/Dockerfile" | tr -d '\\' | tr ' ' '\n' \
    | sed -n '/--no-install-recommends/,/&&/p' | grep -E '^[a-z0-9][a-z0-9.+-]+$' | sort | tr '\n' ' ')"
[[ -n "$packages" ]] || die "could not read the apt-get package list from the Dockerfile"
key="$(printf '%s\n' "$SUITE" minbase "$MIRROR" "$packages" | sha256sum | cut -c1-16)"
rootfs="$CACHE/rootfs-$SUITE-$key.tar"
echo "    packages: $packages(key $key)"
if [[ -f "$rootfs" && -s "$rootfs" ]]; then
    ok "cached: ${rootfs#"$ROOT"/}"
else
    mkdir -p "$CACHE"
    rm -rf "$CACHE"/rootfs-* "$CACHE"/partial-*
    # mmdebstrap writes a tarball when the name ends in .tar (else a directory)
    # shellcheck disable=SC2086  # the package list is words
    mmdebstrap --quiet --variant=minbase --include="$(echo $packages | tr ' ' ',')" \
        --aptopt='Acquire::Retries "3"' "$SUITE" "$CACHE/partial-$key.tar" "$MIRROR"
    mv "$CACHE/partial-$key.tar" "$rootfs"
    ok "made ${rootfs#"$ROOT"/} ($(du -h "$rootfs" | cut -f1))"
fi

# ------------------------------------------------------------------------------------------------
REUSE="${IMAGE_TEST_STORE:-}"
if [[ -n "$REUSE" ]]; then
    step "storage: reusing $REUSE (IMAGE_TEST_STORE)"
    STORE="$REUSE"
    [[ -s "$STORE/storage.conf" ]] || die "$STORE has no storage.conf (IMAGE_TEST_STORE takes a store kept by IMAGE_TEST_KEEP=1)"
    driver="$(sed -n 's/^driver = "\(.*\)"$/\1/p' "$STORE/storage.conf")"
else
    step "storage of its own under $TMP_PARENT"
    mkdir -p "$TMP_PARENT"
    STORE="$(mktemp -d "$TMP_PARENT/dpstudy-image-test.XXXXXX")"
    driver="${IMAGE_TEST_STORAGE_DRIVER:-}"
    if [[ -z "$driver" ]]; then  # overlay where the kernel and filesystem allow it (fast), else vfs
        mkdir -p "$STORE/probe/"{l,u,w,m}
        if mount -t overlay overlay -o "lowerdir=$STORE/probe/l,upperdir=$STORE/probe/u,workdir=$STORE/probe/w" \
            "$STORE/probe/m" 2>/dev/null; then
            umount "$STORE/probe/m"
            driver=overlay
        else
            driver=vfs
        fi
        rm -rf "$STORE/probe"
    fi
    printf '[storage]\ndriver = "%s"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n' "$driver" "$STORE" "$STORE" \
        > "$STORE/storage.conf"
fi
WORK="$STORE/work"
rm -rf "$WORK"
mkdir -p "$WORK"
export CONTAINERS_STORAGE_CONF="$STORE/storage.conf" BUILDAH_ISOLATION=chroot
CONTAINERS=()
cleanup() {
    local rc=$?
    set +e
    if [[ "$KEEP" == 1 ]]; then
        echo "image-test: kept (IMAGE_TEST_KEEP=1): the checkout $WORK/checkout; the image: IMAGE_TEST_STORE=$STORE make image-test"
    else
        local t=$SECONDS
        for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1; done
        buildah rm --all >/dev/null 2>&1
        buildah rmi --all --force >/dev/null 2>&1
        # whatever the engine left mounted under the store, then the store itself
        grep -F " $STORE/" /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l 2>/dev/null
        [[ "$(basename "$STORE")" == dpstudy-image-test.* ]] && rm -rf "$STORE"
        echo "image-test: removed $STORE (images, containers, checkout) in $((SECONDS - t))s;" \
            "$(df -h --output=avail "$TMP_PARENT" | tail -1 | tr -d ' ') free"
    fi
    exit "$rc"
}
trap cleanup EXIT
avail_kb="$(df -k --output=avail "$STORE" | tail -1)"
echo "    $STORE: driver $driver, $((avail_kb / 1024 / 1024)) GiB free"
((avail_kb > 30 * 1024 * 1024)) || die "needs 30 GiB free under $TMP_PARENT (IMAGE_TEST_TMP=<dir> for another place)"

if [[ -n "$REUSE" ]] && buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    step "image: $IMAGE, already built in $STORE (IMAGE_TEST_STORE; not rebuilt)"
    build_s="(not rebuilt)"
else
# ------------------------------------------------------------------------------------------------
step "import the stand-in base as $BASE"
ctr="$(buildah from scratch)"
CONTAINERS+=("$ctr")
buildah add --quiet "$ctr" "$rootfs" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
buildah commit --quiet "$ctr" "$BASE" >/dev/null
buildah rm "$ctr" >/dev/null
ok "$(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$BASE")"

# ------------------------------------------------------------------------------------------------
step "make image (buildah build, BASE_IMAGE=$BASE)"
# --network host: the build reaches the Debian archive and PyPI as this host does; the host's CA
# bundle is mounted read-only over the stand-in's (a proxy that re-signs TLS is trusted in the build
# as it is here; nothing of it stays in the image).
build_flags="--network host --build-arg BASE_IMAGE=$BASE"
[[ ! -s "$CA_BUNDLE" ]] || build_flags+=" -v $CA_BUNDLE:$CA_BUNDLE:ro"
build_start=$(date +%s)
{ make --no-print-directory -C "$ROOT" image ENGINE=buildah IMAGE="$IMAGE" IMAGE_BUILD_FLAGS="$build_flags" 2>&1 \
      && echo "exit 0" > "$WORK/build.rc" || echo "exit $?" > "$WORK/build.rc"; } | tee "$WORK/build.log" \
    | grep --line-buffered -E '^(STEP|COMMIT|\+ buildah|Error)' | while IFS= read -r line; do stamp "$line"; done || true
[[ "$(cat "$WORK/build.rc")" == "exit 0" ]] || { tail -40 "$WORK/build.log"; die "the build failed (log above)"; }
build_s=$(($(date +%s) - build_start))
fi
size="$(buildah images --format '{{.Size}}' "$IMAGE")"
echo "    storage after the build: $(du -sh "$STORE" | cut -f1) in $STORE, $(df -h --output=avail "$STORE" | tail -1 | tr -d ' ') free"
ok "$IMAGE (build: ${build_s}s): $size, revision $(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.revision"}}' "$IMAGE")"

# The image's ENTRYPOINT, as `docker run` prepends it (buildah run does not).
mapfile -t ENTRY < <(buildah inspect --type image "$IMAGE" \
    | python3 -c 'import json, sys; print(*json.load(sys.stdin)["OCIv1"]["config"]["Entrypoint"], sep="\n")')
((${#ENTRY[@]})) || die "the image has no ENTRYPOINT"
echo "    entry point: ${ENTRY[*]}"

# docker run --rm --user $RUN_AS -v <dir>:/workspace/dpstudy $IMAGE <cmd>: a fresh container each time
drun() {
    local dir="$1" c rc=0
    shift
    c="$(buildah from --pull-never "$IMAGE")"
    CONTAINERS+=("$c")
    # Where buildah's chroot isolation differs from docker run, it is made to match: tini is not PID 1
    # (no PID namespace), so it registers as a subreaper to reap as PID 1 would; the container's
    # hostname resolves, as in the /etc/hosts Docker writes (torchrun's c10d store looks it up).
    buildah run --user "$RUN_AS" --network host --env TINI_SUBREAPER=1 \
        --hostname dpstudy-image-test --no-hosts --volume "$WORK/hosts:/etc/hosts:ro" \
        --volume "$dir:$WORKDIR_IN" "$c" -- "${ENTRY[@]}" "$@" || rc=$?
    buildah rm "$c" >/dev/null
    return "$rc"
}
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tdpstudy-image-test\n' > "$WORK/hosts"
ownership() {  # every file in $1 belongs to uid:gid
    local strangers
    strangers="$(find "$1" \( ! -uid "$uid" -o ! -gid "$gid" \) -printf '%u:%g %P\n' | head -5)"
    if [[ -z "$strangers" ]]; then ok "every file in the checkout belongs to $RUN_AS ($(find "$1" | wc -l) paths)"
    else bad "files in the checkout not owned by $RUN_AS: $strangers"; fi
}

# ------------------------------------------------------------------------------------------------
step "checkout: a fresh git clone of $ROOT (HEAD), chowned to $RUN_AS"
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]]; then
    echo "    note: $ROOT has uncommitted changes: they are in the image (built from the work tree), not in this clone"
fi
CHECKOUT="$WORK/checkout"
git clone --quiet "$ROOT" "$CHECKOUT"
git -C "$CHECKOUT" show HEAD:params.yaml > "$WORK/params.committed.yaml"
head_line="$(git -C "$CHECKOUT" log -1 --format='%h %s' | cut -c1-100)"
chown -R "$RUN_AS" "$CHECKOUT"
ok "$head_line"

# ------------------------------------------------------------------------------------------------
step "dpstudy --help"
if drun "$CHECKOUT" dpstudy --help > "$WORK/help.log" 2>&1 && grep -q '^usage: dpstudy' "$WORK/help.log"; then
    ok "$(head -1 "$WORK/help.log")"
else
    cat "$WORK/help.log"; bad "dpstudy --help"
fi

step "a tree without .git is refused in one line, untouched"
EXPORT="$WORK/export"
mkdir -p "$EXPORT"
git -C "$CHECKOUT" -c safe.directory='*' archive HEAD | tar -x -C "$EXPORT"
chown -R "$RUN_AS" "$EXPORT"
rc=0
drun "$EXPORT" dvc exp run -S preset=quick > "$WORK/export.out" 2> "$WORK/export.all" || rc=$?
# buildah's own lines about the exit status are not the container's
grep -vE '^(subprocess exited with status [0-9]+|Error: exit status [0-9]+)$' "$WORK/export.all" > "$WORK/export.err" || true
if [[ "$rc" -eq 2 && "$(wc -l < "$WORK/export.err")" -eq 1 && ! -s "$WORK/export.out" && ! -e "$EXPORT/.git" ]] \
    && grep -q 'git clone' "$WORK/export.err"; then
    ok "exit 2: $(cat "$WORK/export.err")"
else
    cat "$WORK/export.out" "$WORK/export.err"; bad "export: exit $rc, .git $( [[ -e $EXPORT/.git ]] && echo made || echo absent)"
fi

# ------------------------------------------------------------------------------------------------
STAGES="$(python3 -c 'import re, sys; t = open(sys.argv[1]).read(); print(len(re.findall(r"^  [a-z_]+:\n    cmd:", t, re.M)))' "$CHECKOUT/dvc.yaml")"
exp_run() {  # $1: log name; docs/docker.md's command with the quick preset; progress lines shown
    local rc
    { drun "$CHECKOUT" dvc exp run -S preset=quick 2>&1 && echo 0 > "$WORK/$1.rc" || echo "$?" > "$WORK/$1.rc"; } \
        | tee "$WORK/$1.log" | grep --line-buffered -E "^(Running stage|Stage '.*' didn't change|Ran experiment|ERROR)" \
        | while IFS= read -r line; do stamp "$line"; done || true
    rc="$(cat "$WORK/$1.rc")"
    [[ "$rc" -eq 0 ]] || { tail -40 "$WORK/$1.log"; bad "dvc exp run -S preset=quick exited $rc"; }
    return 0
}
mlflow_runs() {  # "<status> <count>" lines of the checkout's MLflow store
    python3 - "$CHECKOUT/mlflow.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
for status, n in db.execute("select status, count(*) from runs group by status order by status"):
    print(status, n)
PY
}
params_identical() {
    if cmp -s "$WORK/params.committed.yaml" "$CHECKOUT/params.yaml"; then
        ok "params.yaml byte-identical to the committed one"
    else
        bad "params.yaml differs from the committed one:"
        diff -u "$WORK/params.committed.yaml" "$CHECKOUT/params.yaml" | head -40 >&2 || true
    fi
}

step "pipeline: dvc exp run -S preset=quick (the image's default command, quick preset), $STAGES stages"
pipeline_start=$(date +%s)
exp_run run1
pipeline_s=$(($(date +%s) - pipeline_start))
ran="$(grep -c '^Running stage' "$WORK/run1.log" || true)"
[[ "$ran" -eq "$STAGES" ]] && ok "$ran stages ran in ${pipeline_s}s" || bad "$ran of $STAGES stages ran"
[[ -s "$CHECKOUT/results/REPORT.md" ]] && ok "results/REPORT.md written ($(wc -l < "$CHECKOUT/results/REPORT.md") lines)" \
    || bad "no results/REPORT.md"
if [[ -s "$CHECKOUT/mlflow.db" ]]; then
    runs1="$(mlflow_runs)"
    echo "    mlflow.db runs by status: $(echo "$runs1" | tr '\n' ' ')"
    if [[ -n "$runs1" && -z "$(echo "$runs1" | grep -v '^FINISHED ')" ]]; then ok "every MLflow run FINISHED"
    else bad "MLflow runs not all FINISHED: $runs1"; fi
else
    runs1=""
    bad "no mlflow.db in the checkout"
fi
ownership "$CHECKOUT"
params_identical
find "$CHECKOUT/results" "$CHECKOUT/data" -type f -printf '%T@ %P\n' | sort -k2 > "$WORK/mtimes1"

# ------------------------------------------------------------------------------------------------
step "second experiment: the same command again (nothing to re-run)"
rerun_start=$(date +%s)
exp_run run2
rerun_s=$(($(date +%s) - rerun_start))
skipped="$(grep -c "^Stage '.*' didn't change, skipping" "$WORK/run2.log" || true)"
ran="$(grep -c '^Running stage' "$WORK/run2.log" || true)"
[[ "$ran" -eq 0 && "$skipped" -eq "$STAGES" ]] && ok "all $STAGES stages skipped (didn't change), ${rerun_s}s" \
    || bad "rerun: $ran stages ran, $skipped of $STAGES skipped"
find "$CHECKOUT/results" "$CHECKOUT/data" -type f -printf '%T@ %P\n' | sort -k2 > "$WORK/mtimes2"
if cmp -s "$WORK/mtimes1" "$WORK/mtimes2"; then ok "results/ and data/ unchanged ($(wc -l < "$WORK/mtimes1") files, same mtimes)"
else bad "the rerun changed files:"; diff "$WORK/mtimes1" "$WORK/mtimes2" | head -20 >&2 || true; fi
[[ "$(mlflow_runs)" == "$runs1" ]] && ok "no new MLflow runs" || bad "MLflow runs changed: $(mlflow_runs | tr '\n' ' ')"
ownership "$CHECKOUT"
params_identical

step "dvc metrics show --md"
if drun "$CHECKOUT" dvc metrics show --md > "$WORK/metrics.log" 2>&1 && grep -q 'results/' "$WORK/metrics.log"; then
    ok "$(grep -c 'results/' "$WORK/metrics.log") metrics files"
else
    cat "$WORK/metrics.log"; bad "dvc metrics show --md"
fi
ownership "$CHECKOUT"

# ------------------------------------------------------------------------------------------------
step "summary"
venv="$(drun "$CHECKOUT" du -sh /opt/venv 2>/dev/null | cut -f1 || true)"
PHASES+=("$(printf '%5ds  %s' $(($(date +%s) - phase_start)) "summary")")
printf '    %s\n' "${PHASES[@]}"
echo "    build ${build_s}s; image $size (venv ${venv:-?}); pipeline ${pipeline_s}s; rerun ${rerun_s}s; total $(($(date +%s) - T0))s"
if ((FAILED)); then
    echo "image-test: $FAILED check(s) FAILED" >&2
    exit 1
fi
echo "image-test: all checks passed"
