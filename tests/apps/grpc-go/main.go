// A second, real app for gatehouse's end-to-end tests: a grpc-go server with the library's
// own health service and server reflection (grpc.reflection.v1alpha, all grpc-go 1.33
// has), and nothing else, on default server settings. The defaults are the
// point: grpc-go enforces its keepalive policy (at most one ping per 5 minutes, none
// without an open stream) and closes the connection with GOAWAY too_many_pings otherwise,
// so a sidecar that pings its app too often is caught here as it would be in production.
//
// Built in GOPATH mode against Debian's golang-google-grpc-dev (tests/tools.sh does it):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o grpc-go-app ./tests/apps/grpc-go
//
// Usage: grpc-go-app HOST:PORT. With port 0 the kernel picks one; the bound address is
// printed on stdout as `listening ADDRESS` either way. Lines on stdin change the health
// status: `SERVICE SERVING` or `SERVICE NOT_SERVING` (`""` names the whole server), so a
// test can make a quiet Health/Watch stream speak when it chooses to.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-go-app HOST:PORT")
		os.Exit(64)
	}
	listener, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "grpc-go-app: listen %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	// No server options: default keepalive enforcement, default stream limits.
	server := grpc.NewServer()
	status := health.NewServer()
	healthpb.RegisterHealthServer(server, status)
	reflection.Register(server)

	go control(status)
	fmt.Printf("listening %s\n", listener.Addr())
	if err := server.Serve(listener); err != nil {
		fmt.Fprintf(os.Stderr, "grpc-go-app: serve: %v\n", err)
		os.Exit(1)
	}
}

// control applies `SERVICE STATUS` lines from stdin until stdin ends; the server keeps
// serving after that, so the app also runs with stdin closed.
func control(status *health.Server) {
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) != 2 {
			fmt.Fprintf(os.Stderr, "grpc-go-app: ignored %q: want SERVICE STATUS\n", lines.Text())
			continue
		}
		service := fields[0]
		if service == `""` {
			service = ""
		}
		value, known := healthpb.HealthCheckResponse_ServingStatus_value[fields[1]]
		if !known {
			fmt.Fprintf(os.Stderr, "grpc-go-app: ignored %q: unknown status\n", fields[1])
			continue
		}
		status.SetServingStatus(service, healthpb.HealthCheckResponse_ServingStatus(value))
		fmt.Printf("status %s %s\n", fields[0], fields[1])
	}
}
