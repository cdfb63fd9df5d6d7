// Command concepts asks an ExplainServe server which concepts of a concept set drive a model's
// prediction for each sentence (ExplainConcepts) and prints the strongest ones.
//
//	go run ./examples/concepts -target 127.0.0.1:50051 -concepts pca8 "The food was cold." "Lovely!"
//
// Per input it prints "input N: TEXT", the predicted class, the explained class (the predicted
// one), the residual (the share of the class's logit the concepts do not reconstruct), then the
// -top concepts by absolute contribution, one line each: the concept's label, a tab, its signed
// contribution (normalized: the absolute contributions of all concepts sum to 1; shortest float32
// representation, so the number is exact). Without -concepts it uses the model's first concept
// set, as GetModel lists them. Set EXPLAINSERVE_TOKEN when the server wants a bearer token.
package main

import (
	"flag"
	"fmt"
	"log"
	"math"
	"sort"

	"github.com/explainserve/explainserve/clients/go/examples/internal/connect"
	explainservev1 "github.com/explainserve/explainserve/clients/go/explainserve/v1"
)

func main() {
	options := connect.Flags()
	concepts := flag.String("concepts", "", "concept set name (default: the model's first)")
	top := flag.Int("top", 3, "concepts printed per input")
	flag.Parse()
	if flag.NArg() == 0 {
		log.Fatal("usage: concepts [-target host:port] [-model name] [-concepts set] [-top N] TEXT...")
	}

	s := options.Start()
	defer s.Close()
	name := *concepts
	if name == "" {
		sets := s.Model.GetConceptSets()
		if len(sets) == 0 {
			log.Fatalf("model %s serves no concept set (explainserve serve --concepts NAME=PATH)", s.Model.GetName())
		}
		name = sets[0].GetName()
	}
	inputs := make([]*explainservev1.Input, flag.NArg())
	for i, text := range flag.Args() {
		inputs[i] = &explainservev1.Input{Content: &explainservev1.Input_Text{Text: text}}
	}
	reply, err := s.Client.ExplainConcepts(s.Ctx, &explainservev1.ExplainConceptsRequest{
		Model:    s.Model.GetName(),
		Inputs:   inputs,
		Concepts: &explainservev1.ConceptSetRef{Set: &explainservev1.ConceptSetRef_Name{Name: name}},
	})
	if err != nil {
		log.Fatalf("ExplainConcepts: %v", err)
	}

	labels := reply.GetConceptLabels()
	for _, e := range reply.GetExplanations() {
		// No targets were asked for: the one target is the predicted class.
		t := e.GetTargets()[0]
		fmt.Printf("input %d: %s\n", e.GetInputIndex(), e.GetText())
		fmt.Printf("predicted: %s\n", s.Model.GetLabels()[connect.Argmax(e.GetLogits())])
		fmt.Printf("explained: %s\n", t.GetTarget().GetLabel())
		fmt.Printf("residual: %s\n", connect.Float32(t.GetResidual()))
		values := perConcept(t.GetContributions())
		for _, k := range strongest(values, *top) {
			fmt.Printf("%s\t%s\n", labels[k], connect.Float32(values[k]))
		}
	}
}

// perConcept sums a row-major [rows, concepts] matrix over its rows (there is one row at the
// classification head's input).
func perConcept(m *explainservev1.Matrix) []float32 {
	out := make([]float32, m.GetCols())
	for i, v := range m.GetValues() {
		out[i%len(out)] += v
	}
	return out
}

// strongest is the indices of the n values of largest magnitude, largest first (ties in index
// order).
func strongest(values []float32, n int) []int {
	order := make([]int, len(values))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		return math.Abs(float64(values[order[a]])) > math.Abs(float64(values[order[b]]))
	})
	return order[:min(n, len(order))]
}
