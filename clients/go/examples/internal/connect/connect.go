// Package connect holds what the examples share: a channel to the server with the retry policy,
// a context with the run's deadline and the bearer token, the model's metadata, and how they
// print numbers.
package connect

import (
	"cmp"
	"context"
	"flag"
	"log"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	explainservev1 "github.com/explainserve/explainserve/clients/go/explainserve/v1"
)

// ServiceConfig retries UNAVAILABLE (the server loading its models or draining, a dropped
// connection): every ExplainService method is read-only, so a retry is safe. The same policy as
// the Python client's RETRY_POLICY.
const ServiceConfig = `{"methodConfig": [{
  "name": [{"service": "explainserve.v1.ExplainService"}],
  "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s",
                  "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}`

// Session is an example's connection to the server.
type Session struct {
	// Client is the ExplainService client on a plaintext channel with ServiceConfig.
	Client explainservev1.ExplainServiceClient
	// Ctx bounds every call of the run by its deadline, and carries EXPLAINSERVE_TOKEN as a bearer
	// token when it is set.
	Ctx context.Context
	// Model is the model's metadata (GetModel); its name is the one requests give.
	Model *explainservev1.ModelInfo
	close func()
}

// Options are the flags every example has: the server, the model and the run's deadline.
type Options struct {
	target, model *string
	timeout       *time.Duration
}

// Flags declares -target, -model and -timeout on the command line; parse it, then Start.
func Flags() *Options {
	return &Options{
		target:  flag.String("target", "127.0.0.1:50051", "server host:port"),
		model:   flag.String("model", "minilm-sentiment", "model name as ListModels gives it"),
		timeout: flag.Duration("timeout", 2*time.Minute, "deadline of the whole run"),
	}
}

// Start connects to -target, starts the run's deadline of -timeout and asks for -model's
// metadata; it exits with the error when any of it fails. Close the session when done.
func (o *Options) Start() *Session {
	conn, err := grpc.NewClient(*o.target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(ServiceConfig))
	if err != nil {
		log.Fatalf("connect: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *o.timeout)
	if token := os.Getenv("EXPLAINSERVE_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	s := &Session{
		Client: explainservev1.NewExplainServiceClient(conn),
		Ctx:    ctx,
		close: func() {
			cancel()
			conn.Close()
		},
	}
	info, err := s.Client.GetModel(ctx, &explainservev1.GetModelRequest{Name: *o.model})
	if err != nil {
		s.Close()
		log.Fatalf("GetModel: %v", err)
	}
	s.Model = info.GetModel()
	return s
}

// Close ends the run: its deadline's timer, and the channel.
func (s *Session) Close() {
	s.close()
}

// Float32 is v's shortest representation as a float32, so that the printed number is exact.
func Float32(v float32) string {
	return strconv.FormatFloat(float64(v), 'g', -1, 32)
}

// Argmax is the index of values' largest element (the first of equal ones).
func Argmax[T cmp.Ordered](values []T) int {
	best := 0
	for i, v := range values {
		if v > values[best] {
			best = i
		}
	}
	return best
}
