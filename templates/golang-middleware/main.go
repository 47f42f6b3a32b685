// fjord golang-middleware runtime: the OpenFaaS golang-middleware contract
// (`func Handle(w http.ResponseWriter, r *http.Request)` in package function, your
// function/handler.go) on net/http at 127.0.0.1:$PORT.
//
// `fjord build` copies this file into your module as fjordmain/main.go (the import of
// "handler/function" becomes your go.mod's module path) and builds one static binary, so
// your go.mod and vendor/ are the build's. Every method on every path goes to Handle.
// HTTP/1.1 keep-alive (idle connections kept 180 s, longer than the gateway's 90 s pool
// timeout), request head limited to 64 KiB (431 beyond). A panicking handler gives a 500
// when nothing was written yet (the panic and its stack go to stderr). SIGTERM: stop
// accepting, answer the requests in progress, exit 0.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	function "handler/function"
)

// tracked notes whether the handler wrote a status, so a panic after it does not send a
// second one.
type tracked struct {
	http.ResponseWriter
	wrote bool
}

func (t *tracked) WriteHeader(code int) { t.wrote = true; t.ResponseWriter.WriteHeader(code) }
func (t *tracked) Write(b []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriter.Write(b)
}

// Flush keeps streaming handlers working (http.Flusher through the wrapper).
func (t *tracked) Flush() {
	if f, ok := t.ResponseWriter.(http.Flusher); ok {
		t.wrote = true
		f.Flush()
	}
}

func serve(w http.ResponseWriter, r *http.Request) {
	t := &tracked{ResponseWriter: w}
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			fmt.Fprintf(os.Stderr, "handler panicked: %v\n%s", p, debug.Stack())
			if !t.wrote {
				http.Error(w, "Internal Server Error", http.StatusInternalServerError)
			}
		}
	}()
	function.Handle(t, r)
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot listen on 127.0.0.1:%s: %v\n", port, err)
		os.Exit(1)
	}
	srv := &http.Server{
		Handler:        http.HandlerFunc(serve),
		MaxHeaderBytes: 64 << 10,
		IdleTimeout:    180 * time.Second,
	}
	done := make(chan struct{})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		// Shutdown closes idle connections at once and the others after their answer.
		_ = srv.Shutdown(context.Background())
		close(done)
	}()
	fmt.Printf("golang-middleware function listening on 127.0.0.1:%s\n", port)
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		os.Exit(1)
	}
	<-done
}
