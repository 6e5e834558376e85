package lines

import (
	"slices"
	"testing"
)

func TestSplitter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		max     int
		writes  []string
		want    []string
		partial string
	}{
		{"one write, two lines", 10, []string{"a\nbc\n"}, []string{"a", "bc"}, ""},
		{"a line across writes", 10, []string{"ab", "c", "d\ne"}, []string{"abcd"}, "e"},
		{"empty lines", 10, []string{"\n\nx\n"}, []string{"", "", "x"}, ""},
		{"long lines cut", 3, []string{"abcdef\n", "gh", "ijk\nl"}, []string{"abc", "ghi"}, "l"},
		{"a cut line's rest is dropped until its newline", 2, []string{"abc", "def", "\nxy"}, []string{"ab"}, "xy"},
		{"nothing", 5, []string{""}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSplitter(tc.max)
			var got []string
			for _, w := range tc.writes {
				s.Split([]byte(w), func(l string) { got = append(got, l) })
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("lines %q, want %q", got, tc.want)
			}
			if p := string(s.Partial()); p != tc.partial {
				t.Errorf("partial %q, want %q", p, tc.partial)
			}
		})
	}
}

func FuzzSplitter(f *testing.F) {
	f.Add([]byte("a\nbc"), 3, 2)
	f.Fuzz(func(t *testing.T, b []byte, max, cut int) {
		max = 1 + int(uint(max)%64)
		cut = int(uint(cut) % uint(len(b)+1))
		s := NewSplitter(max)
		var got []string
		s.Split(b[:cut], func(l string) { got = append(got, l) })
		s.Split(b[cut:], func(l string) { got = append(got, l) })
		// Whatever the cut, the lines are those of b, each cut to max.
		var want []string
		rest := b
		for {
			i := slices.Index(rest, '\n')
			if i < 0 {
				break
			}
			want = append(want, string(rest[:min(i, max)]))
			rest = rest[i+1:]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Split(%q | %q, max %d) = %q, want %q", b[:cut], b[cut:], max, got, want)
		}
		if p := string(s.Partial()); p != string(rest[:min(len(rest), max)]) {
			t.Fatalf("partial %q, want %q", p, rest[:min(len(rest), max)])
		}
	})
}

func TestRing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		n       int
		add     []string
		partial string
		want    string
	}{
		{"empty", 3, nil, "", ""},
		{"not full", 3, []string{"a", "b"}, "", "a\nb\n"},
		{"exactly full", 2, []string{"a", "b"}, "", "a\nb\n"},
		{"wrapped, oldest dropped", 2, []string{"a", "b", "c"}, "", "b\nc\n"},
		{"with a partial line", 2, []string{"a", "b", "c", "d", "e"}, "f", "d\ne\nf\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRing(tc.n)
			for _, l := range tc.add {
				r.Add(l)
			}
			if got := r.String([]byte(tc.partial)); got != tc.want {
				t.Errorf("String = %q, want %q", got, tc.want)
			}
		})
	}
}
