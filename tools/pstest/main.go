// Command pstest runs Google's in-memory Pub/Sub fake (cloud.google.com/go/pubsub/v2/pstest)
// on a loopback port, for the forwarder's tests and `./run_local.sh stream`.
//
//	pstest -port 8085
//	pstest -port 8085 -lose_acks_for 8s
//	pstest -port 8085 -fail_acks_for 15s
//	pstest -port 8085 -cpuprofile pstest.prof
//
// Clients reach it with PUBSUB_EMULATOR_HOST=127.0.0.1:8085. It prints one line,
// "listening on HOST:PORT", once it accepts connections, and stops on SIGINT or SIGTERM.
//
// With -lose_acks_for, acknowledgements and lease extensions that come within that
// long of the first message published are answered as done and then forgotten, as
// when they are lost on their way: their messages are delivered again once their
// subscription's ack deadline passes, as Pub/Sub's at-least-once delivery allows.
//
// With -fail_acks_for, acknowledgements that come within that long of the first
// message published fail with UNAVAILABLE, as when Pub/Sub cannot be reached: the
// client must send them again (lease extensions are answered as usual).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// lostAcks forgets the calls it reacts to while within its time of the first publish.
type lostAcks struct {
	mu        sync.Mutex
	duration  time.Duration
	published time.Time // zero until the first Publish
}

func (l *lostAcks) notePublish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.published.IsZero() {
		l.published = time.Now()
	}
}

func (l *lostAcks) losing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.published.IsZero() && time.Since(l.published) < l.duration
}

type publishWatcher struct{ lost *lostAcks }

func (p publishWatcher) React(_ interface{}) (bool, interface{}, error) {
	p.lost.notePublish()
	return false, nil, nil // the fake publishes as usual
}

type ackLoser struct{ lost *lostAcks }

func (a ackLoser) React(_ interface{}) (bool, interface{}, error) {
	if a.lost.losing() {
		return true, nil, nil // answered as done (an empty response), and forgotten
	}
	return false, nil, nil
}

type ackFailer struct{ lost *lostAcks }

func (a ackFailer) React(_ interface{}) (bool, interface{}, error) {
	if a.lost.losing() {
		return true, nil, status.Error(codes.Unavailable, "acknowledgements fail for now (-fail_acks_for)")
	}
	return false, nil, nil
}

func main() {
	port := flag.Int("port", 8085, "loopback port to listen on (0: any free port)")
	loseAcksFor := flag.Duration("lose_acks_for", 0,
		"forget acknowledgements and lease extensions for this long after the first publish")
	failAcksFor := flag.Duration("fail_acks_for", 0,
		"fail acknowledgements with UNAVAILABLE for this long after the first publish")
	cpuProfile := flag.String("cpuprofile", "",
		"write a CPU profile of the whole run to this file (go tool pprof reads it)")
	flag.Parse()

	if *cpuProfile != "" {
		out, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(out)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}

	var options []pstest.ServerReactorOption
	if *loseAcksFor > 0 {
		lost := &lostAcks{duration: *loseAcksFor}
		options = append(options,
			pstest.ServerReactorOption{FuncName: "Publish", Reactor: publishWatcher{lost}},
			pstest.ServerReactorOption{FuncName: "Acknowledge", Reactor: ackLoser{lost}},
			pstest.ServerReactorOption{FuncName: "ModifyAckDeadline", Reactor: ackLoser{lost}},
		)
	}
	if *failAcksFor > 0 {
		failing := &lostAcks{duration: *failAcksFor}
		options = append(options,
			pstest.ServerReactorOption{FuncName: "Publish", Reactor: publishWatcher{failing}},
			pstest.ServerReactorOption{FuncName: "Acknowledge", Reactor: ackFailer{failing}},
		)
	}
	server := pstest.NewServerWithAddress(fmt.Sprintf("127.0.0.1:%d", *port), options...)
	defer server.Close()
	fmt.Printf("listening on %s\n", server.Addr)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
