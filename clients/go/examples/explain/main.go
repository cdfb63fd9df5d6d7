// Command explain explains one sentence with an ExplainServe server and prints each word's score.
//
//	go run ./examples/explain -target 127.0.0.1:50051 "The food was cold."
//
// It prints the model's prediction, the explained class, then one line per unit: its text, a tab,
// its score (shortest float32 representation, so the number is exact). Set EXPLAINSERVE_TOKEN when
// the server wants a bearer token.
package main

import (
	"flag"
	"fmt"
	"log"
	"math"

	"github.com/explainserve/explainserve/clients/go/examples/internal/connect"
	explainservev1 "github.com/explainserve/explainserve/clients/go/explainserve/v1"
)

func main() {
	options := connect.Flags()
	flag.Parse()
	if flag.NArg() != 1 {
		log.Fatal("usage: explain [-target host:port] [-model name] TEXT")
	}

	s := options.Start()
	defer s.Close()
	reply, err := s.Client.Explain(s.Ctx, &explainservev1.ExplainRequest{
		Model:       s.Model.GetName(),
		Inputs:      []*explainservev1.Input{{Content: &explainservev1.Input_Text{Text: flag.Arg(0)}}},
		Method:      &explainservev1.ExplainRequest_Occlusion{Occlusion: &explainservev1.Occlusion{}},
		Granularity: explainservev1.Granularity_GRANULARITY_WORD,
	})
	if err != nil {
		log.Fatalf("Explain: %v", err)
	}

	e := reply.GetExplanations()[0]
	probabilities := softmax(e.GetLogits())
	predicted := connect.Argmax(probabilities)
	fmt.Printf("predicted: %s (%.3f)\n", s.Model.GetLabels()[predicted], probabilities[predicted])
	fmt.Printf("explained: %s\n", e.GetTargets()[0].GetLabel())
	// scores is row-major targets x units; one target, so row 0 is the first len(units) values.
	scores := e.GetScores().GetValues()
	for i, unit := range e.GetUnits() {
		fmt.Printf("%s\t%s\n", unit.GetText(), connect.Float32(scores[i]))
	}
}

func softmax(logits []float32) []float64 {
	peak := math.Inf(-1)
	for _, l := range logits {
		peak = math.Max(peak, float64(l))
	}
	out := make([]float64, len(logits))
	sum := 0.0
	for i, l := range logits {
		out[i] = math.Exp(float64(l) - peak)
		sum += out[i]
	}
	for i := range out {
		out[i] /= sum
	}
	return out
}
