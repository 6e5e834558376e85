package syncbuf

import (
	"fmt"
	"sync"
	"testing"
)

func TestConcurrentWritesAndLine(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fmt.Fprintf(&b, "worker=%d msg=registered\n", i)
		}()
	}
	wg.Wait()
	if line, ok := b.Line("worker=5", "registered"); !ok || line != "worker=5 msg=registered" {
		t.Fatalf("Line = %q, %v", line, ok)
	}
	if _, ok := b.Line("worker=5", "absent"); ok {
		t.Fatal("Line matched a line without every part")
	}
}
