#!/usr/bin/env bash
# The original article's bank built in full, timed: run in an empty folder DIR as
#   bench/bank_full.sh DIR [--weights random]          (first run)
#   bench/bank_full.sh DIR --resume [--weights random] (after an interruption: a new segment)
# Each run is a segment DIR/runN/ holding its start and end times, /usr/bin/time -v's report
# (build.err) and the folder's size every 30 s (disk.log); bench/bank_full.py DIR sums them.
set -u
DIR=$(realpath "$1"); shift
mkdir -p "$DIR"
N=1; while [ -e "$DIR/run$N" ]; do N=$((N + 1)); done
SEG="$DIR/run$N"; mkdir "$SEG"
( while true; do echo "$(date +%s) $(du -sb "$DIR" 2>/dev/null | cut -f1)" >> "$SEG/disk.log"; sleep 30; done ) &
MONITOR=$!
date +%s > "$SEG/start"
/usr/bin/time -v jaxmosaic library build gabor-bank --features alexnet -o "$DIR/bank.npz" "$@" \
    > "$SEG/build.out" 2> "$SEG/build.err"
echo $? > "$SEG/rc"
date +%s > "$SEG/end"
kill $MONITOR
