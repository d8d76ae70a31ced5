//go:build tools

// Keeps `go mod tidy` from dropping the command this module exists to build.
package tools

import _ "github.com/opentofu/opentofu/cmd/tofu"
