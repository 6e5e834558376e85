// Package procmem reads how much memory a process holds, from Linux's
// /proc/<pid>/smaps_rollup, for the benchmarks that measure job processes.
package procmem

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Mem is a process's resident memory, in bytes.
type Mem struct {
	// RSS is the resident set: every page the process maps, including
	// those it shares with other processes (the executable's).
	RSS int64
	// PSS is the resident set with a page shared by n processes counted
	// 1/n: what the process adds to the machine's memory.
	PSS int64
	// Anon is the process's own resident memory (heap, stacks).
	Anon int64
}

// Read reads the memory of process pid. It fails where /proc has no
// smaps_rollup (other systems than Linux, a process that is gone).
func Read(pid int) (Mem, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return Mem{}, fmt.Errorf("procmem: memory of process %d: %w", pid, err)
	}
	m := Parse(b)
	if m.RSS == 0 {
		return Mem{}, fmt.Errorf("procmem: memory of process %d: no Rss line in smaps_rollup", pid)
	}
	return m, nil
}

// Parse reads the Rss, Pss and Anonymous lines ("Rss:  1234 kB") of an
// smaps_rollup file; what it does not know it skips.
func Parse(smapsRollup []byte) Mem {
	var m Mem
	for line := range strings.SplitSeq(string(smapsRollup), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "Rss:":
			m.RSS = kb << 10
		case "Pss:":
			m.PSS = kb << 10
		case "Anonymous:":
			m.Anon = kb << 10
		}
	}
	return m
}

// Mean is the mean of ms; zero when ms is empty.
func Mean(ms []Mem) Mem {
	if len(ms) == 0 {
		return Mem{}
	}
	var sum Mem
	for _, m := range ms {
		sum.RSS += m.RSS
		sum.PSS += m.PSS
		sum.Anon += m.Anon
	}
	n := int64(len(ms))
	return Mem{RSS: sum.RSS / n, PSS: sum.PSS / n, Anon: sum.Anon / n}
}
