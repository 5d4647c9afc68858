#!/bin/sh
# Stand-in for /usr/local/bin/python in launcher-test/fake-python:1.
# Records how it was started, then behaves as the FAKE_* environment asks:
#   FAKE_SLEEP=<s>  sleep first        FAKE_EXIT=<code>  exit with that code (default 0)
#   FAKE_OOM=1      allocate far more memory than a small mem_limit allows
echo "FAKE-PYTHON ARGV: $*"
echo "FAKE-PYTHON USER: $(id -u):$(id -g) CWD: $(pwd)"
# Like the real job, never print credential values (the full env goes to the job dir only).
env | sort | sed -e 's/^\(NVFLARE_JOB_[A-Z_]*\)=.*/\1=***/' -e 's/^/FAKE-PYTHON ENV: /'
if [ -w . ]; then
    printf '%s\n' "$@" > ./fake-python.argv
    env | sort > ./fake-python.env
fi
[ -n "$FAKE_SLEEP" ] && sleep "$FAKE_SLEEP"
if [ "$FAKE_OOM" = "1" ]; then
    exec dd if=/dev/zero of=/dev/null bs=512M count=1
fi
exit "${FAKE_EXIT:-0}"
