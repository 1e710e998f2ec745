package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process is a child process whose output is captured and whose exit is a
// channel, so that every wait on it can be bounded.
type Process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // the exit, once exited is closed
	out    *SyncBuffer
}

// StartProcess starts name with args in dir, with HOME and the XDG
// directories pointing at dir so that nothing is written outside it, and
// extraEnv added to the environment.
func StartProcess(dir string, extraEnv []string, name string, args ...string) (*Process, error) {
	p := &Process{cmd: exec.Command(name, args...), exited: make(chan struct{}), out: &SyncBuffer{}}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	p.cmd.Env = append(p.cmd.Env, extraEnv...)
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is how the process exited; it is valid once Exited is closed.
func (p *Process) Err() error {
	<-p.exited
	return p.err
}

// Log is the buffer that collects the process's output, for readers that
// keep it across calls.
func (p *Process) Log() *SyncBuffer { return p.out }

// Output returns everything the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %v: %w", sig, err)
	}
	return nil
}

// Wait waits up to d for the process to exit.
func (p *Process) Wait(d time.Duration) error {
	select {
	case <-p.exited:
		return nil
	case <-time.After(d):
		return fmt.Errorf("process %s did not exit within %v", p.cmd.Path, d)
	}
}

// Kill ends the process at once (SIGKILL) if it still runs, and waits for
// it.
func (p *Process) Kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}
