// Package handler: fjord's own copy of the types of the OpenFaaS golang-http SDK
// (github.com/openfaas/templates-sdk/go-http), so handlers written for that template build
// unchanged without fetching the module (`fjord build` wires this folder in with a replace
// directive, or into vendor/ when the handler vendors its dependencies).
package handler

import (
	"context"
	"net/http"
)

// Response of a function call.
type Response struct {
	// Body the body will be written back
	Body []byte

	// StatusCode needs to be populated with value such as http.StatusOK (0 means 200)
	StatusCode int

	// Header is optional and contains any additional headers the function response should set
	Header http.Header
}

// Request of a function call.
type Request struct {
	Body        []byte
	Header      http.Header
	QueryString string
	Method      string
	Host        string
	ctx         context.Context
}

// Context is cancelled when the client goes away or the request ends.
func (r Request) Context() context.Context {
	if r.ctx == nil {
		return context.Background()
	}
	return r.ctx
}

// WithContext overides the context for the Request struct
func (r *Request) WithContext(ctx context.Context) {
	// AE: Not keen on panic mid-flow in user-code, however stdlib also appears to do
	// this. https://golang.org/src/net/http/request.go
	// This is not setting a precedent for broader use of "panic" to handle errors.
	if ctx == nil {
		panic("nil context")
	}
	r.ctx = ctx
}

// FunctionHandler used for a serverless Go method invocation
type FunctionHandler interface {
	Handle(req Request) (Response, error)
}
