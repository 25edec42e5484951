#!/usr/bin/env bash
# One-call GPU verification of the CUDA flavor, for a machine with an NVIDIA GPU (sized for ~8 minutes on an
# H100/H200):
#
#   bash tools/gpu-check.sh [OUTDIR]          OUTDIR defaults to $OUT, else ./gpu-check-out
#
#   1. setup      node, node_modules and dist/ from .gpu-carry/ (tools/gpu-pack.sh) where the machine has none
#   2. build      the CUDA flavor for the present GPU's arch only (cmake-js, --CDCMAKE_CUDA_ARCHITECTURES=<cc>-real)
#                 and dist/ (tsc), then a load check (the loader must pick the CUDA flavor)
#   3. tests      vitest over the device tests test/gpu/*.test.ts (the *-emulated ones run without a GPU in
#                 `npm test`; GPU_CHECK_EMULATED=1 adds them); fails if any device test was skipped
#   4. memcheck   compute-sanitizer --tool memcheck over each device test file (one vitest fork per file)
#   5. racecheck  compute-sanitizer --tool racecheck over the files with shared-memory kernels, as many as the
#                 time budget allows
#   6. bench      npm run bench -- gemm|moe|pkm --device cuda, and PyTorch's matmul (tools/torch_gemm.py) as the
#                 GEMM reference where python3 has torch
#
# Every step has a timeout; a failing step does not stop the later ones, and the exit status is 1 when any
# step failed. OUTDIR receives at most 7 files (the device tool returns 8): summary.txt, build.log, tests.log,
# memcheck.log, racecheck.log, bench.log and bench-cuda.json (the three suites' JSON results, merged).
#
# Knobs (environment): GPU_CHECK_ARCH (e.g. 90a-real; default from nvidia-smi), GPU_CHECK_SKIP (comma list of
# steps to leave out, e.g. build,memcheck), GPU_CHECK_EMULATED=1, GPU_CHECK_MEMCHECK_S (total budget, 180),
# GPU_CHECK_RACECHECK_S (90), GPU_CHECK_FILE_S (per file under a sanitizer, 100), GPU_CHECK_BENCH_ARGS_MOE /
# _PKM / _GEMM (extra suite arguments), GPU_CHECK_DEADLINE_S (570: every step's timeout is cut so that the script
# ends by then, inside a 600 s call; steps left without time are reported as not run).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
OUTDIR=${1:-${OUT:-$ROOT/gpu-check-out}}
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
SUMMARY=$OUTDIR/summary.txt
export NO_COLOR=1 FORCE_COLOR=0
START=$SECONDS
FAILED=0

: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
# result STEP STATUS DETAIL: one summary line per step; STATUS FAIL makes the exit status 1.
result() {
  [ "$2" = FAIL ] && FAILED=1
  note "$(printf '%-10s %-5s %s  (%ds, at %ds)' "$1" "$2" "$3" "$((SECONDS - STEP_T0))" "$((SECONDS - START))")"
}
join() {
  local out
  out=$(printf '%s; ' "$@")
  echo "${out%; }"
}
# cap N: N seconds, or fewer so that the script ends by its deadline (GPU_CHECK_DEADLINE_S after the start).
DEADLINE=${GPU_CHECK_DEADLINE_S:-570}
cap() {
  local left=$((DEADLINE - (SECONDS - START) - 10))
  [ "$left" -lt 1 ] && left=1
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
skipped() { case ",${GPU_CHECK_SKIP:-}," in *",$1,"*) return 0 ;; esac; return 1; }
begin() { STEP_T0=$SECONDS; echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

note "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo +dirty)"

# ---- 1. setup -------------------------------------------------------------------------------------------------
begin setup
# unxz SRC DST: xz where present, else Python's lzma.
unxz_to() {
  if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi
}
untar_xz() {
  if command -v xz >/dev/null; then tar -xJf "$1"; else python3 -c 'import sys,tarfile; tarfile.open(sys.argv[1]).extractall(".")' "$1"; fi
}
SETUP=ok
if ! command -v node >/dev/null && [ -f .gpu-carry/node.xz ]; then
  mkdir -p "$WORK/bin" && unxz_to .gpu-carry/node.xz "$WORK/bin/node" && chmod +x "$WORK/bin/node" && export PATH="$WORK/bin:$PATH" \
    || SETUP="node from .gpu-carry failed"
fi
if [ ! -d node_modules/vitest ] && [ -f .gpu-carry/modules.tar.xz ]; then
  untar_xz .gpu-carry/modules.tar.xz || SETUP="unpacking .gpu-carry/modules.tar.xz failed"
fi
command -v node >/dev/null || SETUP="no node on PATH and no .gpu-carry/node.xz (run tools/gpu-pack.sh here and carry .gpu-carry)"
[ -d node_modules/vitest ] || SETUP="no node_modules (npm ci, or carry .gpu-carry from tools/gpu-pack.sh)"
[ -f dist/bench/index.js ] || [ -f node_modules/typescript/bin/tsc ] || SETUP="no dist/ and no tsc (npm run build:ts, or carry .gpu-carry)"
# first_exe NAME PATH...: NAME on PATH, else the first executable PATH.
first_exe() {
  local p
  command -v "$1" && return
  shift
  for p in "$@"; do [ -x "$p" ] && echo "$p" && return; done
  return 0
}
SANITIZER=$(first_exe compute-sanitizer /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer)
NVCC=$(first_exe nvcc /usr/local/cuda/bin/nvcc)
{
  echo "node: $(node --version 2>&1)"
  echo "nvcc: $([ -n "$NVCC" ] && "$NVCC" --version | tail -2 | head -1 || echo none)"
  echo "compute-sanitizer: ${SANITIZER:-none} $([ -n "$SANITIZER" ] && "$SANITIZER" --version 2>&1 | grep -i version | head -1)"
  echo "gpu: $(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo 'nvidia-smi failed')"
} | tee -a "$SUMMARY"
if [ "$SETUP" = ok ]; then result setup PASS ""; else result setup FAIL "$SETUP"; fi

# ---- 2. build ---------------------------------------------------------------------------------------------------
begin build
# The CUDA flavor prebuilt by tools/gpu-pack.sh, where carried: the fallback when the build here fails.
carried() {
  [ -f .gpu-carry/sparse_ffn_cuda.node ] && mkdir -p build-cuda/Release &&
    cp .gpu-carry/sparse_ffn_cuda.node build-cuda/Release/sparse_ffn_cuda.node
}
if skipped build; then
  result build SKIP "GPU_CHECK_SKIP"
else
  CC_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  [ -n "$CC_CAP" ] || CC_CAP=$(/usr/local/cuda/bin/__nvcc_device_query 2>/dev/null | tr -d ' \n')
  ARCH=${GPU_CHECK_ARCH:-${CC_CAP:+${CC_CAP}-real}}
  if [ -z "$ARCH" ]; then
    echo "no GPU compute capability from nvidia-smi or __nvcc_device_query" >"$OUTDIR/build.log"
    if carried; then
      result build FAIL "cannot tell the GPU's arch (set GPU_CHECK_ARCH); using the carried .gpu-carry/sparse_ffn_cuda.node"
    else
      result build FAIL "cannot tell the GPU's arch (set GPU_CHECK_ARCH)"
    fi
  else
    [ -n "$NVCC" ] && PATH="$(dirname "$NVCC"):$PATH" && export PATH
    # cmake-js compile configures only a fresh build-cuda/: another arch in its cache needs a rebuild.
    VERB=compile
    CACHED=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' build-cuda/CMakeCache.txt 2>/dev/null)
    [ -f build-cuda/CMakeCache.txt ] && [ "$CACHED" != "$ARCH" ] && VERB=rebuild
    if timeout -k 10 "$(cap 420)" node node_modules/cmake-js/bin/cmake-js "$VERB" --out build-cuda \
      "--CDCMAKE_CUDA_ARCHITECTURES=$ARCH" >"$OUTDIR/build.log" 2>&1; then
      result build PASS "CUDA flavor for $ARCH"
    elif carried; then
      result build FAIL "build for $ARCH failed (see build.log); using the carried .gpu-carry/sparse_ffn_cuda.node"
    else
      result build FAIL "build for $ARCH failed or timed out (see build.log)"
    fi
  fi
  # dist/ (the benchmarks) from this tree's TypeScript, so a carried dist/ cannot be stale.
  if [ -f node_modules/typescript/bin/tsc ]; then
    timeout -k 10 "$(cap 120)" node node_modules/typescript/bin/tsc -p tsconfig.build.json >>"$OUTDIR/build.log" 2>&1 \
      || result build:ts FAIL "tsc -p tsconfig.build.json failed (see build.log)"
  fi
fi
# The loader must pick the CUDA flavor; everything below needs it.
LOAD=$(SPARSE_FFN_BACKEND=cuda node --input-type=module -e "
  try {
    const { info } = await import('./dist/lib/index.js');
    const i = info();
    console.log(i.backend + ' | ' + i.reason + ' | ' + i.binaryPath);
  } catch (e) {
    console.error(String(e && e.stack || e));
    console.log('error | ' + String(e && e.message || e).split('\\n').slice(0, 3).join(' '));
  }" 2>>"$OUTDIR/build.log" | tail -1)
echo "load: $LOAD" >>"$OUTDIR/build.log"
case "$LOAD" in
  cuda*) result load PASS "$(echo "$LOAD" | cut -d'|' -f2 | sed 's/^ *//')" ;;
  *) result load FAIL "the CUDA flavor does not load: $LOAD" ;;
esac

# ---- 3. device tests --------------------------------------------------------------------------------------------
DEVICE_TESTS=$(printf '%s\n' test/gpu/*.test.ts | grep -v -- '-emulated\.test\.ts$')
begin tests
if skipped tests; then
  result tests SKIP "GPU_CHECK_SKIP"
else
  FILES=$DEVICE_TESTS
  [ "${GPU_CHECK_EMULATED:-0}" = 1 ] && FILES=$(printf '%s\n' test/gpu/*.test.ts)
  # shellcheck disable=SC2086
  timeout -k 10 "$(cap 300)" node node_modules/vitest/vitest.mjs run $FILES --maxWorkers=4 --reporter=default --reporter=json \
    "--outputFile.json=$WORK/vitest.json" >"$OUTDIR/tests.log" 2>&1
  RC=$?
  # Every device test file must have run: passed tests, and no skipped test except the no-GPU fallback case.
  VERDICT=$(node -e '
    const fs = require("fs");
    let d;
    try { d = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch (e) { console.log("FAIL no JSON report (" + e.message + ")"); process.exit(); }
    const files = process.argv[2].split("\n").filter(Boolean);
    const bad = [];
    for (const f of files) {
      const r = d.testResults.find((x) => x.name.endsWith("/" + f));
      if (!r) { bad.push(f + ": not in the report"); continue; }
      const by = (s) => r.assertionResults.filter((a) => a.status === s);
      const skip = r.assertionResults.filter((a) => a.status !== "passed" && a.status !== "failed" && !/fails its probe/.test(a.fullName));
      if (skip.length) bad.push(f + ": " + skip.length + " skipped (" + skip[0].fullName + ")");
      if (!by("passed").length) bad.push(f + ": nothing passed");
      if (by("failed").length) bad.push(f + ": " + by("failed").length + " failed, e.g. " + by("failed")[0].fullName);
    }
    const s = d.numPassedTests + " passed, " + d.numFailedTests + " failed, " + d.numPendingTests + " skipped";
    const shown = bad.slice(0, 4).join("; ") + (bad.length > 4 ? "; and " + (bad.length - 4) + " more" : "");
    console.log((bad.length ? "FAIL " : "PASS ") + s + (bad.length ? "; " + shown : ""));
  ' "$WORK/vitest.json" "$DEVICE_TESTS" 2>&1)
  echo "verdict: $VERDICT (vitest exit $RC)" >>"$OUTDIR/tests.log"
  if [ "$RC" -eq 0 ] && [ "${VERDICT%% *}" = PASS ]; then
    result tests PASS "${VERDICT#PASS }"
  else
    [ "$RC" -eq 124 ] && VERDICT="timed out; $VERDICT"
    result tests FAIL "vitest exit $RC: ${VERDICT#* }"
  fi
fi

# ---- 4./5. compute-sanitizer ------------------------------------------------------------------------------------
# sanitize TOOL BUDGET_S STRICT FILES...: each file in its own vitest run (one fork) under the sanitizer, which
# follows the fork (--target-processes all); error lines as ERR_RE below. API errors are not reported (the tests
# provoke some on purpose). STRICT=1: a file that times out or is left out fails the step.
sanitize() {
  local tool=$1 budget=$2 strict=$3 log=$OUTDIR/$1.log
  shift 3
  : >"$log"
  begin "$tool"
  if skipped "$tool"; then result "$tool" SKIP "GPU_CHECK_SKIP"; return; fi
  if [ -z "$SANITIZER" ]; then result "$tool" FAIL "compute-sanitizer not found"; return; fi
  local t_end=$((SECONDS + $(cap "$budget"))) per=${GPU_CHECK_FILE_S:-100} status=PASS parts=() f left rc errs warns ran=0
  for f in "$@"; do
    left=$((t_end - SECONDS))
    if [ "$left" -lt 20 ]; then
      parts+=("$(basename "$f" .test.ts): not run (budget)")
      [ "$strict" = 1 ] && status=FAIL
      continue
    fi
    [ "$left" -gt "$per" ] && left=$per
    echo "##### $tool $f (limit ${left}s)" >>"$log"
    local t0=$SECONDS
    ran=$((ran + 1))
    timeout -k 10 "$left" "$SANITIZER" --tool "$tool" --target-processes all --report-api-errors no --print-limit 30 \
      node node_modules/vitest/vitest.mjs run "$f" --maxWorkers=1 --reporter=default >"$WORK/one.log" 2>&1
    rc=$?
    cat "$WORK/one.log" >>"$log"
    errs=$(grep -cE "$ERR_RE" "$WORK/one.log")
    warns=$(grep -cE "$WARN_RE" "$WORK/one.log")
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      parts+=("$(basename "$f" .test.ts): TIMEOUT after $((SECONDS - t0))s, $errs error lines so far")
      [ "$strict" = 1 ] && status=FAIL
      [ "$errs" -gt 0 ] && status=FAIL
    elif [ "$errs" -gt 0 ]; then
      parts+=("$(basename "$f" .test.ts): $errs ERROR lines")
      status=FAIL
    elif grep -q '] skipped: ' "$WORK/one.log"; then
      parts+=("$(basename "$f" .test.ts): the tests SKIPPED ($(grep -m1 -o 'skipped: .*' "$WORK/one.log" | cut -c1-80))")
      status=FAIL
    elif [ "$rc" -ne 0 ]; then
      parts+=("$(basename "$f" .test.ts): vitest exit $rc (tests failed under the sanitizer)")
      status=FAIL
    else
      parts+=("$(basename "$f" .test.ts): clean$([ "$warns" -gt 0 ] && echo ", $warns warning lines") ($((SECONDS - t0))s)")
    fi
    echo "##### $tool $f: exit $rc, $errs error lines, $warns warning lines, $((SECONDS - t0))s" >>"$log"
  done
  [ "$ran" -eq 0 ] && status=FAIL
  result "$tool" "$status" "$(join "${parts[@]}")"
}
# Error lines: memcheck's "ERROR SUMMARY: N errors" and racecheck's "RACECHECK SUMMARY: H hazards displayed
# (N errors, W warnings)" with N > 0, and the reports themselves (which print even when a process is killed before
# its summary). Racecheck's warnings are counted and shown but do not fail the step.
ERR_RE='ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: [0-9]+ hazards? displayed \([1-9]|========= (Invalid |Error: Race reported|Misaligned|Out-of-range)'
WARN_RE='========= Warning: Race reported|RACECHECK SUMMARY: .*, [1-9][0-9]* warning'

# Most-used kernels first; memcheck covers every device test file, racecheck the files with shared-memory kernels
# while its budget lasts.
sanitize memcheck "${GPU_CHECK_MEMCHECK_S:-180}" 1 \
  test/gpu/moe-route.test.ts test/gpu/moe-experts.test.ts test/gpu/ffn-dense.test.ts test/gpu/pkm-ops.test.ts \
  test/gpu/nn-ops.test.ts test/gpu/attention.test.ts test/gpu/gemm.test.ts test/gpu/device.test.ts
sanitize racecheck "${GPU_CHECK_RACECHECK_S:-90}" 0 \
  test/gpu/moe-experts.test.ts test/gpu/gemm.test.ts test/gpu/moe-route.test.ts test/gpu/pkm-ops.test.ts \
  test/gpu/attention.test.ts test/gpu/nn-ops.test.ts test/gpu/ffn-dense.test.ts

# ---- 6. benchmarks ----------------------------------------------------------------------------------------------
begin bench
if skipped bench; then
  result bench SKIP "GPU_CHECK_SKIP"
else
  : >"$OUTDIR/bench.log"
  parts=()
  BSTATUS=PASS
  for suite in gemm moe pkm; do
    json=bench/results/$([ $suite = gemm ] && echo gemm-cuda || echo $suite)-cuda.json
    rm -f "$json"
    extra_var=GPU_CHECK_BENCH_ARGS_${suite^^}
    t0=$SECONDS
    lim=$(cap 240)
    if [ "$lim" -lt 30 ]; then
      parts+=("$suite: not run (deadline)"); BSTATUS=FAIL
      continue
    fi
    echo "##### bench $suite --device cuda ${!extra_var:-}" >>"$OUTDIR/bench.log"
    # shellcheck disable=SC2086
    timeout -k 10 "$lim" node --single-threaded-gc dist/bench/index.js $suite --device cuda ${!extra_var:-} >>"$OUTDIR/bench.log" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
      parts+=("$suite: exit $rc$([ $rc -eq 124 ] && echo ' (timeout)')"); BSTATUS=FAIL
    elif [ ! -f "$json" ]; then
      parts+=("$suite: no JSON (skipped?)"); BSTATUS=FAIL
    else
      parts+=("$suite: ok ($((SECONDS - t0))s)")
    fi
  done
  # PyTorch's matmul on the same GPU: the reference of the GEMM target (bf16 8192³ at 50% of it).
  rm -f "$WORK/torch.json"
  if python3 -c 'import torch' 2>/dev/null; then
    echo "##### python3 tools/torch_gemm.py" >>"$OUTDIR/bench.log"
    timeout -k 10 "$(cap 90)" python3 tools/torch_gemm.py "$WORK/torch.json" >>"$OUTDIR/bench.log" 2>&1 \
      && parts+=("torch matmul: ok") || parts+=("torch matmul: failed (not counted)")
  else
    parts+=("torch matmul: no torch (not counted)")
  fi
  # The three suites' results (and PyTorch's) in one file.
  node -e '
    const fs = require("fs");
    const out = {};
    try { out.torch = JSON.parse(fs.readFileSync(process.argv[2], "utf8")); } catch { out.torch = null; }
    for (const [k, f] of [["gemm", "gemm-cuda-cuda"], ["moe", "moe-cuda"], ["pkm", "pkm-cuda"]]) {
      try { out[k] = JSON.parse(fs.readFileSync("bench/results/" + f + ".json", "utf8")); } catch { out[k] = null; }
    }
    fs.writeFileSync(process.argv[1], JSON.stringify(out, null, 2) + "\n");
  ' "$OUTDIR/bench-cuda.json" "$WORK/torch.json"
  result bench "$BSTATUS" "$(join "${parts[@]}")"
  # The tables, for the reply's tail.
  grep -A12 -E '^(CUDA GEMM|σ-MoE layer|PKM \(Dk|PyTorch .* matmul)' "$OUTDIR/bench.log" | grep -v '^--$' >>"$SUMMARY"
fi

note "total $((SECONDS - START))s; $([ $FAILED = 0 ] && echo 'ALL PASSED' || echo 'SOME STEPS FAILED') (logs in $OUTDIR)"
rm -rf "$WORK"
echo
cat "$SUMMARY"
exit $FAILED
