package function

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// Handle: the OpenFaaS golang-middleware contract. Greets the name in the body (or
// ?name=), in JSON.
func Handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	name := strings.TrimSpace(string(body))
	if name == "" {
		name = r.URL.Query().Get("name")
	}
	if name == "" {
		name = "world"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"message": "Hello, " + name + "!"})
}
