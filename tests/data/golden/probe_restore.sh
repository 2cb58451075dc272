#!/bin/sh
# Oracle probe (../shared/kernel-oracle/run-in-vm.sh this file OUT): Debian's ipvsadm-restore
# (a shell script: grep -v "^#", then echo into ipvsadm -R) on odd inputs; OUT/restore.txt is
# tests/data/golden/restore.txt.
O=$ORACLE_OUT/restore.txt
cat "$(command -v ipvsadm-restore)" > $ORACLE_OUT/ipvsadm-restore.sh
run() {  # name, then the input (printf %b)
  name=$1; shift
  ipvsadm -C
  printf "%b" "$@" | ipvsadm-restore > /tmp/o 2> /tmp/e; rc=$?
  echo "== $name rc=$rc" >> $O; cat /tmp/o /tmp/e >> $O; ipvsadm -Sn >> $O
}
run two-blanks-no-newline '-A -t 203.0.113.200:80 -s rr  '
run form-feed-comment '-A -t 203.0.113.200:80 -s rr\n-A -t 203.0.113.200:81 -s rr\f#x\n-A -t 203.0.113.200:82 -s rr\n'
run cr-comment '-A -t 203.0.113.200:80 -s rr\r#x\n-A -t 203.0.113.200:83 -s rr\n'
run hash-line '#c\n-A -t 203.0.113.200:84 -s rr\n  #c\n'
run nul-byte '-A -t 203.0.113.200:85 -s rr\n\000#x\n-A -t 203.0.113.200:86 -s rr\n'
