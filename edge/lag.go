package edge

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// lagGate holds the backup lag under BackupOptions.MaxLag by slowing the
// committer: while a master follows the change stream and the oldest
// change it has not confirmed was committed more than MaxLag ago, the
// committer waits before it starts the next group. Writers then feel it
// as slower acknowledgements (devices have a bounded window in flight),
// so ingest settles at what the master can take.
//
// The gate never stops writes for good. It is open while no master
// follows (none connected, or one receiving a snapshot), and while the
// master is stuck rather than slow: when its confirmed seq has not moved
// for stuckAfter (twice MaxLag, at least a second; an S3 outage, say),
// writes go on at full speed and the change log keeps what the master has
// not taken, as without the gate. It stays open while the master catches
// up with what was committed during the stall, and holds again only for
// what came after.
type lagGate struct {
	max     time.Duration
	now     func() time.Time
	waited  prometheus.Counter
	follows atomic.Bool   // a master is streaming changes (the backup loop sets it)
	conf    atomic.Uint64 // the highest change seq it confirmed

	mu       sync.Mutex
	groups   []groupMark // committed groups not confirmed yet, oldest first
	lastConf uint64      // conf when last looked at, and when it last moved
	moved    time.Time
	// backlogTo, when set, is the last change committed while the master
	// was stuck: until it confirms that far the gate stays open (the
	// backlog of an outage is not the writers' to wait for), then what
	// was committed during the catch-up counts from that moment.
	backlogTo uint64
}

// groupMark is one committed group: its last change seq and when.
type groupMark struct {
	last uint64
	at   time.Time
}

// lagPoll is how often a held committer looks at the lag again.
const lagPoll = 2 * time.Millisecond

func newLagGate(max time.Duration, reg prometheus.Registerer) (*lagGate, error) {
	g := &lagGate{max: max, now: time.Now, waited: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "iotkv_backup_lag_wait_seconds_total",
		Help: "Time the committer held new writes because the master was more than --max-backup-lag behind.",
	})}
	if err := reg.Register(g.waited); err != nil {
		return nil, err
	}
	return g, nil
}

// maxMarks bounds the groups the gate remembers; past it the newest mark
// takes the later groups too (it keeps its older time, so the lag it
// gives can only be too high, never too low).
const maxMarks = 4096

// committed notes a durable group (committer goroutine). With no master
// following there is nothing to hold for, and nothing is kept.
func (g *lagGate) committed(last uint64) {
	if !g.follows.Load() {
		return
	}
	g.mu.Lock()
	if n := len(g.groups); n >= maxMarks {
		g.groups[n-1].last = last
	} else {
		g.groups = append(g.groups, groupMark{last: last, at: g.now()})
	}
	g.mu.Unlock()
}

// confirmed notes the master's confirmed seq (backup loop).
func (g *lagGate) confirmed(seq uint64) { g.conf.Store(seq) }

// stuckAfter is how long the confirmed seq may stand still, with changes
// waiting, before the gate takes the master for stuck.
func (g *lagGate) stuckAfter() time.Duration { return max(2*g.max, time.Second) }

// holds reports whether the committer should wait now.
func (g *lagGate) holds() bool {
	if !g.follows.Load() {
		g.mu.Lock()
		g.groups, g.backlogTo = g.groups[:0], 0
		g.mu.Unlock()
		return false
	}
	conf := g.conf.Load()
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if conf != g.lastConf || g.moved.IsZero() {
		g.lastConf, g.moved = conf, now
	}
	i := 0
	for i < len(g.groups) && g.groups[i].last <= conf {
		i++
	}
	g.groups = g.groups[i:]
	if len(g.groups) == 0 {
		g.moved, g.backlogTo = now, 0 // nothing to confirm: not stuck
		return false
	}
	if g.backlogTo != 0 {
		if conf < g.backlogTo {
			return false // catching up with the stall's backlog
		}
		g.backlogTo = 0
		for i := range g.groups {
			g.groups[i].at = now
		}
	}
	if now.Sub(g.moved) >= g.stuckAfter() {
		g.backlogTo = g.groups[len(g.groups)-1].last
		return false
	}
	return now.Sub(g.groups[0].at) > g.max
}

// wait returns once the gate opens or quit is closed (committer
// goroutine, before each group).
func (g *lagGate) wait(quit <-chan struct{}) {
	select {
	case <-quit:
		return
	default:
	}
	if !g.holds() {
		return
	}
	start := g.now()
	defer func() { g.waited.Add(g.now().Sub(start).Seconds()) }()
	t := time.NewTicker(lagPoll)
	defer t.Stop()
	for g.holds() {
		select {
		case <-quit:
			return
		case <-t.C:
		}
	}
}
