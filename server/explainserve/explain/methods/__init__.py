"""One module per attribution method; each registers its class (`explain.method.register`), and
`explain.method.methods()` imports every module found here."""
