//go:build tools

// Imports the etcd server so that `go mod tidy` keeps go.sum complete for it.
package tools

import _ "go.etcd.io/etcd/server/v3"
