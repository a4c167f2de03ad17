package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/dbproxy/dbproxy/admin"
	"github.com/dbproxy/dbproxy/config"
)

// Deps are what run hands to startProxies.
type Deps struct {
	// Logger is the process logger; name children with Logger.Named.
	Logger *zap.Logger
	// Registry is the process's metrics registry, served at /metrics.
	// Register collectors on it, never on the global default registry.
	Registry *prometheus.Registry
	// Admin is the admin server, already listening but not yet ready:
	// add /v1 endpoints with Admin.Handle and readiness checks with
	// Admin.AddReadinessCheck. Nil when admin.disabled is true.
	Admin *admin.Server
	// ConfigPath is the configuration file, which a reload re-reads.
	ConfigPath string
}

// Service is something startProxies started that must be stopped
// gracefully on SIGINT/SIGTERM (a listener, a credential broker, ...).
type Service interface {
	// Name identifies the service in logs.
	Name() string
	// Shutdown stops accepting new work and waits for open sessions to
	// finish until ctx ends (cfg.ShutdownTimeout), then closes what is
	// left. It returns how many sessions were still open at the deadline.
	Shutdown(ctx context.Context) (stillOpen int, err error)
}

// start is startProxies; tests replace it.
var start = startProxies

// Reloader is a Service that can apply a changed configuration file
// (SIGHUP); its error says why it kept the running configuration.
type Reloader interface {
	Reload(ctx context.Context) (any, error)
}

// notifySignals delivers SIGINT, SIGTERM and SIGHUP to ch until stop is
// called; tests replace it.
var notifySignals = func(ch chan<- os.Signal) (stop func()) {
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	return func() { signal.Stop(ch) }
}

// adminShutdownTimeout bounds stopping the admin server after the proxies.
const adminShutdownTimeout = 5 * time.Second

// runCmd loads the configuration and serves until SIGINT/SIGTERM;
// SIGHUP reloads the configuration.
func runCmd(ctx context.Context, g *globalFlags, args []string, stderr io.Writer) int {
	fs := newFlagSet("run", stderr)
	path := fs.String("config", "", "configuration file (required)")
	g.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *path == "" {
		fmt.Fprintln(stderr, "dbproxy run: --config FILE is required")
		fs.Usage()
		return exitUsage
	}
	if err := g.validate(); err != nil {
		fmt.Fprintf(stderr, "dbproxy run: %v\n", err)
		return exitUsage
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitUsage
	}
	log := g.newLogger(stderr)
	defer func() { _ = log.Sync() }()
	applyRuntime(cfg.Runtime, log)

	sigs := make(chan os.Signal, 2)
	stop := notifySignals(sigs)
	defer stop()
	return serve(ctx, cfg, *path, log, sigs, stderr)
}

// serve starts the admin server and the proxies, waits for a signal (or
// ctx to end), and shuts everything down gracefully.
func serve(ctx context.Context, cfg *config.Config, path string, log *zap.Logger, sigs <-chan os.Signal, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "dbproxy: %v\n", err)
		return exitStartup
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "dbproxy_build_info",
			Help:        "Always 1; labels name the dbproxy version and Go toolchain.",
			ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
	)

	// runCtx lives until every service has shut down, so background work
	// (credential renewal) keeps going while sessions drain.
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()

	var adm *admin.Server
	if !cfg.Admin.Disabled {
		var token string
		if cfg.Admin.TokenFile != "" {
			t, err := config.ReadSecretFile(cfg.Admin.TokenFile)
			if err != nil {
				return fail(fmt.Errorf("admin.token_file: %w", err))
			}
			token = t
		}
		adm = admin.New(admin.Options{Address: cfg.Admin.Address, Registry: reg, Logger: log, Token: token, AllowedHosts: cfg.Admin.AllowedHosts})
		if cfg.Admin.Pprof {
			adm.MountPprof()
		}
		if err := adm.Start(runCtx); err != nil {
			return fail(err)
		}
	}
	stopAdmin := func() {
		if adm == nil {
			return
		}
		actx, cancel := context.WithTimeout(context.Background(), adminShutdownTimeout)
		defer cancel()
		if err := adm.Shutdown(actx); err != nil {
			log.Warn("admin shutdown", zap.Error(err))
		}
	}

	services, err := start(runCtx, cfg, Deps{Logger: log, Registry: reg, Admin: adm, ConfigPath: path})
	if err != nil {
		// startProxies stops what it started before failing; stop anything
		// it still handed back.
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.D())
		shutdownServices(sctx, services, log)
		cancel()
		stopAdmin()
		return fail(err)
	}
	if adm != nil {
		adm.SetReady(true)
	}
	log.Info("dbproxy started", zap.String("version", version), zap.Int("services", len(services)))
	notify(log, "READY=1")

	timeout := cfg.ShutdownTimeout.D()
wait:
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				reloadServices(runCtx, services, log)
				continue
			}
			log.Info("shutting down", zap.Stringer("signal", s), zap.Duration("timeout", timeout))
			break wait
		case <-ctx.Done():
			log.Info("shutting down", zap.NamedError("reason", context.Cause(ctx)), zap.Duration("timeout", timeout))
			break wait
		}
	}

	// A second signal means "now"; a SIGHUP during shutdown is ignored.
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGHUP {
					continue
				}
				log.Warn("second signal: exiting without waiting for sessions", zap.Stringer("signal", s))
				_ = log.Sync()
				exitNow(exitSignal)
			case <-done:
				return
			}
		}
	}()

	notify(log, "STOPPING=1")
	if adm != nil {
		adm.SetReady(false)
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	stillOpen := shutdownServices(sctx, services, log)
	cancel()
	cancelRun()
	stopAdmin()
	log.Info("dbproxy stopped", zap.Int("still_open", stillOpen))
	return exitOK
}

// reloadServices reloads each service that can (SIGHUP). Each logs its
// own result: a refused reload leaves it running as it was.
func reloadServices(ctx context.Context, services []Service, log *zap.Logger) {
	n := 0
	for _, s := range services {
		if r, ok := s.(Reloader); ok {
			_, _ = r.Reload(ctx)
			n++
		}
	}
	if n == 0 {
		log.Warn("SIGHUP: nothing to reload")
	}
}

// shutdownServices shuts every service down at the same time under ctx and
// returns how many sessions were still open in total.
func shutdownServices(ctx context.Context, services []Service, log *zap.Logger) int {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int
	)
	for _, s := range services {
		if s == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			began := time.Now()
			n, err := s.Shutdown(ctx)
			fields := []zap.Field{zap.String("service", s.Name()), zap.Int("still_open", n), zap.Duration("took", time.Since(began))}
			if err != nil {
				log.Warn("service shutdown", append(fields, zap.Error(err))...)
			} else {
				log.Info("service stopped", fields...)
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total
}

// notify is sdNotify with its failure logged: a unit that expects
// notifications and gets none is restarted by systemd, so say why.
func notify(log *zap.Logger, state string) {
	if err := sdNotify(state); err != nil {
		log.Warn("service manager notification failed", zap.String("state", state), zap.Error(err))
	}
}
