package lkserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Version is the livekit-server release used by this package.
const Version = "v1.13.5"

const (
	// serverPackage is the Go package path of the livekit-server command.
	serverPackage = "github.com/livekit/livekit-server/cmd/server"
	// serverBinaryName is the file name `go install` gives to serverPackage.
	serverBinaryName = "server"

	// EnvServerBinary names the environment variable that, when set, points
	// at the livekit-server binary to use instead of the cached build.
	EnvServerBinary = "LIVEKIT_SERVER_BIN"
	// EnvCacheDir names the environment variable that overrides the cache
	// directory (default: os.UserCacheDir()/lkagent).
	EnvCacheDir = "LKAGENT_CACHE_DIR"
)

// Binary returns the path of a livekit-server [Version] binary.
//
// It returns $LIVEKIT_SERVER_BIN if set. Otherwise it returns the cached
// build at <cache>/livekit-server/<Version>/server, where <cache> is
// $LKAGENT_CACHE_DIR or os.UserCacheDir()/lkagent, building it there with
// `go install` first if it does not exist yet. Building takes a minute or
// two; progress lines are written to progress, which may be nil.
//
// Concurrent callers, including separate processes, are safe: the build is
// serialized with a lock file and the binary is installed into a temporary
// directory and renamed into place, so a partially written binary is never
// visible at the final path.
func Binary(ctx context.Context, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	if p := os.Getenv(EnvServerBinary); p != "" {
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("%s: %w", EnvServerBinary, err)
		}
		return p, nil
	}

	dir, err := binaryDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, serverBinaryName)
	if checkExecutable(bin) == nil {
		return bin, nil
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create livekit-server cache dir: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, "install.lock"), func() {
		fmt.Fprintf(progress, "waiting for another process building livekit-server %s\n", Version)
	})
	if err != nil {
		return "", fmt.Errorf("lock livekit-server cache dir: %w", err)
	}
	defer unlock()

	// Another process may have finished the build while we waited.
	if checkExecutable(bin) == nil {
		return bin, nil
	}
	if err := install(ctx, dir, progress); err != nil {
		return "", err
	}
	return bin, nil
}

// binaryDir returns the directory holding the cached build of [Version].
func binaryDir() (string, error) {
	cache := os.Getenv(EnvCacheDir)
	if cache == "" {
		userCache, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("locate cache dir (set %s): %w", EnvCacheDir, err)
		}
		cache = filepath.Join(userCache, "lkagent")
	}
	return filepath.Join(cache, "livekit-server", Version), nil
}

// install builds livekit-server into a temporary directory under dir and
// renames the result to dir/server. The caller must hold the install lock.
func install(ctx context.Context, dir string, progress io.Writer) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("building livekit-server %s needs the go command (or set %s): %w", Version, EnvServerBinary, err)
	}
	tmp, err := os.MkdirTemp(dir, ".install-")
	if err != nil {
		return fmt.Errorf("create temp install dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	fmt.Fprintf(progress, "building livekit-server %s with go install (takes a minute or two)\n", Version)
	start := time.Now()
	cmd := exec.CommandContext(ctx, goBin, "install", serverPackage+"@"+Version)
	cmd.Dir = tmp
	// GOFLAGS such as -mod=vendor from the caller's module must not leak
	// into an install that ignores the current module.
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=", "GOWORK=off")
	cmd.Stdout = progress
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go install %s@%s: %w", serverPackage, Version, err)
	}
	built := filepath.Join(tmp, serverBinaryName)
	if err := checkExecutable(built); err != nil {
		return fmt.Errorf("go install %s@%s produced no binary: %w", serverPackage, Version, err)
	}
	if err := os.Rename(built, filepath.Join(dir, serverBinaryName)); err != nil {
		return fmt.Errorf("install livekit-server binary: %w", err)
	}
	fmt.Fprintf(progress, "built livekit-server %s in %s\n", Version, time.Since(start).Round(time.Second))
	return nil
}

// checkExecutable reports whether path is a regular file with an execute bit.
func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s: %w", path, errNotExecutable)
	}
	return nil
}

var errNotExecutable = errors.New("not an executable file")
