package master

import (
	"fmt"
	"io"
	"log/slog"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// follower is the master's copy of one edge, whatever keeps it: local
// files (edgeBackup) or object storage (s3Edge). The Master owns the MQTT
// client and REST; a follower owns its worker goroutine and its storage.
type follower interface {
	edgeID() string
	edgeAddr() string
	logger() *slog.Logger
	setClient(paho.Client)
	mqtt() paho.Client
	deliver(event) // from paho's goroutine, in order
	run()          // the worker; returns after halt
	halt()         // stops the worker and waits for it
	status() Status
	ready() error
	stream(w io.Writer) error // the full state, for a restore
}

func (eb *edgeBackup) edgeID() string          { return eb.id }
func (eb *edgeBackup) edgeAddr() string        { return eb.addr }
func (eb *edgeBackup) logger() *slog.Logger    { return eb.log }
func (eb *edgeBackup) setClient(c paho.Client) { eb.client = c }
func (eb *edgeBackup) mqtt() paho.Client       { return eb.client }

func (eb *edgeBackup) halt() {
	close(eb.stop)
	if eb.client != nil {
		<-eb.done
	}
}

func (eb *edgeBackup) ready() error {
	if eb.journalFailed.Load() {
		return fmt.Errorf("edge %s: the journal failed; restart the master", eb.id)
	}
	if !eb.status().Connected {
		return fmt.Errorf("edge %s is not connected", eb.id)
	}
	return nil
}

// deliverTo blocks (paho keeps order) until the worker takes ev or the
// master stops.
func deliverTo(in chan<- event, stop <-chan struct{}, ev event) {
	select {
	case in <- ev:
	case <-stop:
	}
}
