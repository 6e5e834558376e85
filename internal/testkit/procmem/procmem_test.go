package procmem

import (
	"os"
	"runtime"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Mem
	}{
		{"empty", "", Mem{}},
		{"rollup", "00400000-7ffd [rollup]\nRss:               22640 kB\nPss:               11274 kB\nPss_Anon:           5944 kB\nAnonymous:          5944 kB\n",
			Mem{RSS: 22640 << 10, PSS: 11274 << 10, Anon: 5944 << 10}},
		{"other units and junk are skipped", "Rss: 12 MB\nPss: x kB\nAnonymous: 3 kB\nRss:\n", Mem{Anon: 3 << 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Parse([]byte(tc.in)); got != tc.want {
				t.Errorf("Parse = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMean(t *testing.T) {
	if got := Mean(nil); got != (Mem{}) {
		t.Errorf("Mean(nil) = %+v, want zero", got)
	}
	got := Mean([]Mem{{RSS: 10, PSS: 4, Anon: 2}, {RSS: 20, PSS: 6, Anon: 4}})
	if want := (Mem{RSS: 15, PSS: 5, Anon: 3}); got != want {
		t.Errorf("Mean = %+v, want %+v", got, want)
	}
}

func TestReadOwnProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("smaps_rollup is Linux's")
	}
	m, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS <= 0 || m.PSS <= 0 || m.Anon <= 0 || m.PSS > m.RSS || m.Anon > m.RSS {
		t.Errorf("Read = %+v: want RSS ≥ PSS, Anon > 0", m)
	}
	if _, err := Read(-1); err == nil {
		t.Error("Read(-1) = nil error")
	}
}
