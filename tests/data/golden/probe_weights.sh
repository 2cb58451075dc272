#!/bin/sh
# Oracle probe (../shared/kernel-oracle/run-in-vm.sh this file OUT): the weights ipvsadm 1.31
# on Linux 6.1 takes and lists; OUT/w.txt is tests/data/golden/weights.txt.
for w in 65535 65536 2147483647 2147483648; do
  ipvsadm -C
  ipvsadm -A -t 203.0.113.200:80 -s rr
  ipvsadm -a -t 203.0.113.200:80 -r 192.0.2.11:80 -m -w $w; echo "w=$w rc=$?"
  ipvsadm -Ln | tail -1
done > $ORACLE_OUT/w.txt 2>&1
ipvsadm --version >> $ORACLE_OUT/w.txt 2>&1
