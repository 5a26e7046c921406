// Command pstest runs Google's in-memory Pub/Sub fake (cloud.google.com/go/pubsub/v2/pstest)
// on a loopback port, for the forwarder's tests and `./run_local.sh stream`.
//
//	pstest -port 8085
//
// Clients reach it with PUBSUB_EMULATOR_HOST=127.0.0.1:8085. It prints one line,
// "listening on HOST:PORT", once it accepts connections, and stops on SIGINT or SIGTERM.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"cloud.google.com/go/pubsub/v2/pstest"
)

func main() {
	port := flag.Int("port", 8085, "loopback port to listen on (0: any free port)")
	flag.Parse()

	server := pstest.NewServerWithAddress(fmt.Sprintf("127.0.0.1:%d", *port))
	defer server.Close()
	fmt.Printf("listening on %s\n", server.Addr)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
