// Package jobprocpb holds the messages between a pool of job processes and
// its processes (package jobproc), generated from jobproc.proto. The
// generated code is committed; regenerate it after changing the .proto
// with go generate, which needs protoc on the PATH.
package jobprocpb

//go:generate sh -c "go build -o protoc-gen-go.bin google.golang.org/protobuf/cmd/protoc-gen-go && protoc --plugin=protoc-gen-go=protoc-gen-go.bin -I . -I \"$(go list -m -f '{{.Dir}}' github.com/livekit/protocol)/protobufs\" --go_out=. --go_opt=paths=source_relative jobproc.proto; status=$?; rm -f protoc-gen-go.bin; exit $status"
