// Command rawcall makes one unary gRPC call with default client settings and prints the status
// it gets: "CODE <number> <message bytes>". The request is a serialized protobuf message read
// from a file, so no generated code is needed (the tests build the bytes in Python).
//
//	rawcall HOST:PORT /package.Service/Method request.bin
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// rawCodec passes messages through as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}

// Name is "proto": the content type stays application/grpc+proto, as the bytes are protobuf.
func (rawCodec) Name() string { return "proto" }

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: rawcall HOST:PORT /package.Service/Method request.bin")
		os.Exit(2)
	}
	request, err := os.ReadFile(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	conn, err := grpc.NewClient(os.Args[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var reply []byte
	err = conn.Invoke(ctx, os.Args[2], &request, &reply, grpc.ForceCodec(rawCodec{}))
	s := status.Convert(err)
	fmt.Printf("CODE %d %d\n", uint32(s.Code()), len(s.Message()))
}
