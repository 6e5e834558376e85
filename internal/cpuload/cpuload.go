// Package cpuload measures the CPU this process uses as a fraction of the
// CPU it may use: the cgroup's quota where one is set (containers), else the
// machine's CPUs.
package cpuload

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Meter reports process CPU use averaged over at least MinWindow.
type Meter struct {
	cpus      float64
	minWindow time.Duration
	now       func() time.Time
	usage     func() time.Duration

	mu       sync.Mutex
	lastAt   time.Time
	lastCPU  time.Duration
	lastLoad float64
}

// New returns a meter over the CPUs this process may use.
func New(minWindow time.Duration) *Meter {
	m := &Meter{cpus: Limit(), minWindow: minWindow, now: time.Now, usage: processCPU}
	m.lastAt, m.lastCPU = m.now(), m.usage()
	return m
}

// Load is the fraction in [0, 1] of the available CPU the process used
// since the previous measurement; within MinWindow of it, the previous
// value again.
func (m *Meter) Load() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	dt := now.Sub(m.lastAt)
	if dt < m.minWindow {
		return m.lastLoad
	}
	cpu := m.usage()
	load := float64(cpu-m.lastCPU) / float64(dt) / m.cpus
	m.lastAt, m.lastCPU, m.lastLoad = now, cpu, min(max(load, 0), 1)
	return m.lastLoad
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Limit is the number of CPUs the process may use: the cgroup v2 or v1 CPU
// quota when set, else runtime.NumCPU().
func Limit() float64 {
	n := float64(runtime.NumCPU())
	if q, ok := cgroupV2Quota("/sys/fs/cgroup/cpu.max"); ok && q < n {
		return q
	}
	if q, ok := cgroupV1Quota("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"); ok && q < n {
		return q
	}
	return n
}

// cgroupV2Quota parses cpu.max: "max 100000" or "200000 100000".
func cgroupV2Quota(path string) (float64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	return parseV2(string(b))
}

func parseV2(s string) (float64, bool) {
	f := strings.Fields(s)
	if len(f) != 2 || f[0] == "max" {
		return 0, false
	}
	quota, err1 := strconv.ParseFloat(f[0], 64)
	period, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || quota <= 0 || period <= 0 {
		return 0, false
	}
	return quota / period, true
}

func cgroupV1Quota(quotaPath, periodPath string) (float64, bool) {
	q, err1 := os.ReadFile(quotaPath)
	p, err2 := os.ReadFile(periodPath)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return parseV2(strings.TrimSpace(string(q)) + " " + strings.TrimSpace(string(p)))
}
