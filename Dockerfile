# syntax=docker/dockerfile:1
#
# codex-app-gateway container image.
#
#   docker build -t codex-app-gateway .
#   docker run --rm -p 8080:8080 -v cxg-data:/var/lib/codex-app-gateway \
#     -e OPENAI_API_KEY -e CXG_MODEL_PROVIDER=openai-api --stop-timeout 90 \
#     codex-app-gateway
#
# Two stages. `build` installs every dependency exactly as the lockfile says
# (`npm ci` runs the package's `prepare` script, which compiles TypeScript),
# then drops the dev dependencies. The runtime stage gets dist/, bin/ and the
# production node_modules only, which include the pinned native codex binary
# (optional dependency @openai/codex-linux-<arch> of @openai/codex).
#
# Both stages use the same Debian 12 base: the uWebSockets.js addon needs
# glibc (2.36 here) and Node 20's ABI, and node_modules built in the first
# stage must load in the second.

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
# For native addons without a prebuilt binary for the build platform
# (bufferutil has none for linux-arm64 and is compiled by node-gyp there).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY src ./src
# After the install: drop the uWebSockets.js addons of other platforms and
# Node versions (about 90 MB), then fail the build unless this platform's
# addon loads (the gateway refuses the slow JavaScript fallback) and the
# codex binary came with the optional dependency.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund \
 && npm prune --omit=dev --no-audit --no-fund \
 && keep="uws_$(node -p 'process.platform + "_" + process.arch + "_" + process.versions.modules').node" \
 && find node_modules/@trufflesuite/uws-js-unofficial/binaries -name 'uws_*.node' ! -name "$keep" -delete \
 && node -e "import('./dist/main/http/uws.js').then((m) => m.uws())" \
 && node -e "import('./dist/shared/codex-bin.js').then((m) => console.log('codex binary:', m.defaultCodexBin()))"

FROM ${NODE_IMAGE} AS runtime
# tini runs as PID 1: it forwards SIGTERM and SIGINT to the gateway (which
# then drains) and reaps processes orphaned inside the container. Node as
# PID 1 would do neither properly. ca-certificates: codex verifies its TLS
# connections to the model provider against the system store.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 codex \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/codex-app-gateway \
      --no-create-home --shell /usr/sbin/nologin codex \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/codex-app-gateway
WORKDIR /app
# Owned by root and read-only to the gateway's user: the code cannot be
# changed by the process that runs it.
COPY --from=build /app/package.json ./
COPY --from=build /app/bin ./bin
COPY --from=build /app/dist ./dist
COPY --from=build /app/node_modules ./node_modules
RUN ln -s /app/bin/codex-app-gateway.mjs /usr/local/bin/codex-app-gateway

# Environment beats a settings file (see docs/configuration.md): change these
# with `-e` or the pod's env, not in gateway.toml. data.dir holds homes.root
# (every running workspace's CODEX_HOME and the upload spool) and, unless
# auth.jwt.secret is set, the generated JWT key.
ENV NODE_ENV=production \
    CXG_DATA_DIR=/var/lib/codex-app-gateway \
    CXG_LISTEN_HOST=0.0.0.0

USER 10001:10001
VOLUME ["/var/lib/codex-app-gateway"]
# The public WebSocket endpoint, /healthz, /readyz and /metrics. The internal
# endpoint (listen.port + 1, admin API) binds 127.0.0.1 and is not published.
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.CXG_LISTEN_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# The gateway is tini's child, not PID 1, so SIGTERM reaches its handler:
# stop accepting, close clients with 1001, stop every child and upload every
# home within shutdown.budget. Give `docker stop` more time than that budget
# (`--stop-timeout` / `-t`); Docker's default of 10 s would SIGKILL a drain.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "bin/codex-app-gateway.mjs", "serve"]
