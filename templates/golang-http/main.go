// fjord golang-http runtime: the OpenFaaS golang-http contract
// (`func Handle(req handler.Request) (handler.Response, error)` in package function, your
// function/handler.go, with handler "github.com/openfaas/templates-sdk/go-http") on net/http
// at 127.0.0.1:$PORT.
//
// `fjord build` copies this file into your module as fjordmain/main.go (the import of
// "handler/function" becomes your go.mod's module path) and builds one static binary. The
// SDK package is fjord's copy (sdk/go-http) unless your vendor/ has the real one. As
// upstream: the request body read whole, an error gives a 500 with its text, StatusCode 0
// means 200. HTTP/1.1 keep-alive (idle connections kept 180 s), request head limited to
// 64 KiB (431 beyond); a panic gives a 500 (stack on stderr). SIGTERM: stop accepting,
// answer the requests in progress, exit 0.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	function "handler/function"

	handler "github.com/openfaas/templates-sdk/go-http"
)

func serve(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			fmt.Fprintf(os.Stderr, "handler panicked: %v\n%s", p, debug.Stack())
			http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		}
	}()
	var body []byte
	if r.Body != nil {
		defer r.Body.Close()
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "cannot read the request body", http.StatusBadRequest)
			return
		}
		body = b
	}
	req := handler.Request{
		Body:        body,
		Header:      r.Header,
		Method:      r.Method,
		QueryString: r.URL.RawQuery,
		Host:        r.Host,
	}
	req.WithContext(r.Context())

	res, err := function.Handle(req)
	if err != nil {
		fmt.Fprintf(os.Stderr, "handler error: %v\n", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	for k, vs := range res.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	status := res.StatusCode
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write(res.Body)
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
	fmt.Printf("golang-http function listening on 127.0.0.1:%s\n", port)
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		os.Exit(1)
	}
	<-done
}
