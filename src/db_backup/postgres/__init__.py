"""PostgreSQL's client tools and the server-side helpers the product needs."""
