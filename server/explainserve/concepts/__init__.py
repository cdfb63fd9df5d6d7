"""Concept explanations: concept sets (a fitted dictionary bound to a served model and a split
point, `sets`), their encoder and decoder in torch (`codec`), the concept contributions to a
prediction (`service`: ExplainConcepts) and concept activations as the explained output of
Explain (`target`)."""
