// A small Go HTTP server with one injected latency fault, for diag's pprof and perf trace tests.
//
//	goserver -fault burn|fsync|gc|lock|none [-dir DIR]
//
// Prints "listening on 127.0.0.1:PORT" once ready. GET /work is the request; net/http/pprof
// serves /debug/pprof/ (CPU, goroutine, block and mutex profiles) on the same port.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
)

var (
	mu      sync.Mutex
	journal *os.File
	record  = make([]byte, 64*1024)
	sink    int
)

// burnCPU spins for d of wall time on this goroutine: pure CPU work.
func burnCPU(d time.Duration) int {
	end := time.Now().Add(d)
	x := 0
	for time.Now().Before(end) {
		for i := 0; i < 1000; i++ {
			x += i * i
		}
	}
	return x
}

// writeSync appends a record to the journal and fsyncs it, under the journal's lock.
func writeSync() {
	mu.Lock()
	defer mu.Unlock()
	journal.Write(record)
	journal.Sync()
}

type node struct {
	next *node
	pad  [6]int
}

// allocGarbage builds and drops a linked list: the collector runs often.
func allocGarbage(n int) int {
	var head *node
	for i := 0; i < n; i++ {
		head = &node{next: head}
	}
	c := 0
	for p := head; p != nil; p = p.next {
		c++
	}
	return c
}

// lockedWork holds one global lock across CPU work: requests queue on it.
func lockedWork() {
	mu.Lock()
	sink += burnCPU(4 * time.Millisecond)
	mu.Unlock()
}

func main() {
	fault := flag.String("fault", "none", "burn, fsync, gc, lock or none")
	dir := flag.String("dir", os.TempDir(), "directory of the journal (fsync)")
	flag.Parse()
	runtime.SetBlockProfileRate(1)
	runtime.SetMutexProfileFraction(1)
	if *fault == "fsync" {
		f, err := os.Create(filepath.Join(*dir, "goserver-journal.bin"))
		if err != nil {
			panic(err)
		}
		journal = f
	}
	http.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		switch *fault {
		case "burn":
			sink += burnCPU(17 * time.Millisecond)
		case "fsync":
			writeSync()
		case "gc":
			sink += allocGarbage(200000)
		case "lock":
			lockedWork()
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{\"ok\": true}\n"))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	os.Stdout.Sync()
	http.Serve(ln, nil)
}
