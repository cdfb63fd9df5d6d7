// Package connect holds what the examples share: a channel to the server with the retry policy,
// a context with the run's deadline and the bearer token, and how they print numbers.
package connect

import (
	"cmp"
	"context"
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

// Dial opens a plaintext channel to target (host:port) with ServiceConfig and returns it with an
// ExplainService client on it; close the channel when done.
func Dial(target string) (*grpc.ClientConn, explainservev1.ExplainServiceClient, error) {
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(ServiceConfig))
	if err != nil {
		return nil, nil, err
	}
	return conn, explainservev1.NewExplainServiceClient(conn), nil
}

// Context bounds every call made with it by timeout, and carries EXPLAINSERVE_TOKEN as a bearer
// token when it is set.
func Context(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	if token := os.Getenv("EXPLAINSERVE_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx, cancel
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
