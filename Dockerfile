# dbproxy container image: a static binary on distroless, running as
# nonroot. Build: docker build --build-arg VERSION=v1.2.3 -t dbproxy .
# Run: mount the config and the secret files it names (Vault token or
# AppRole/Kubernetes files, TLS keys) read-only, e.g.
#   docker run -v /etc/dbproxy:/etc/dbproxy:ro -p 5432:5432 dbproxy
# Listeners in the config must bind 0.0.0.0 to be reachable from outside
# the container; only mtls listeners may (sidecar listeners need loopback,
# so in a pod share the network namespace with the application instead).
# The admin listener then needs admin.token_file too.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first: this layer is reused while only the code changes.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/dbproxy ./cmd/dbproxy \
	&& /out/dbproxy version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dbproxy /usr/local/bin/dbproxy
USER nonroot:nonroot
# PostgreSQL, MySQL and admin (metrics, health, /v1) ports, as commonly configured.
EXPOSE 5432 3306 9187
ENTRYPOINT ["/usr/local/bin/dbproxy"]
CMD ["run", "--config", "/etc/dbproxy/dbproxy.yaml"]
