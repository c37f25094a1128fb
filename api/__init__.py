"""nestrank's HTTP front: the OpenAI, Cohere/Jina and TEI routes over Triton gRPC, through the project's async
clients (so it inherits their failover, deadlines and typed errors). `nestrank serve` starts and supervises it;
`python -m nestrank.api` runs it alone. README.md beside this file has its modules and a runnable command."""
