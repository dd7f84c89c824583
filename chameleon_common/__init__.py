"""Code shared by the three services and the client: process plumbing (server),
tracing, the base model's config and the PEFT format rules, and the adapter
reference type. It imports only the generated stubs (proto/chameleon/v1), never a
service package, so every service may depend on it and none on another."""
