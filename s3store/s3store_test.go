package s3store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotkv/iotkv/internal/testenv"
	"github.com/iotkv/iotkv/s3store"
)

func open(t *testing.T, s3 *testenv.S3, prefix string) *s3store.Store {
	t.Helper()
	st, err := s3store.Open(s3store.Options{URL: s3.URL(prefix), Endpoint: s3.Endpoint, Creds: s3.Creds(), RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func segment(first, last uint64, tag string) []byte {
	var b bytes.Buffer
	for s := first; s <= last; s++ {
		fmt.Fprintf(&b, `{"cseq":%d,"device":"d1","key":"k%d","op":"put","value":%q,"updated_at":1}`+"\n", s, s%3, tag)
	}
	return b.Bytes()
}

func TestTwoWritersRacingForOneSegmentNeverForkTheChain(t *testing.T) {
	s3 := testenv.StartS3(t)
	a, b := open(t, s3, "race"), open(t, s3, "race")
	ctx := context.Background()
	for round := uint64(0); round < 20; round++ {
		first := round*10 + 1
		// Both have first.., with different ends: exactly one wins, the
		// other learns the winner's end.
		type res struct {
			last uint64
			ours bool
			err  error
		}
		var wg sync.WaitGroup
		out := make([]res, 2)
		for i, st := range []*s3store.Store{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				last := first + 9 - uint64(i)
				out[i].last, out[i].ours, out[i].err = st.PutSegment(ctx, "e1", "inc1", first, last, segment(first, last, st.Nonce()))
			}()
		}
		wg.Wait()
		for _, r := range out {
			if r.err != nil {
				t.Fatal(r.err)
			}
		}
		if out[0].ours == out[1].ours || out[0].last != out[1].last {
			t.Fatalf("round %d: %+v: want one winner and the same end for both", round, out)
		}
		// The loser continues after the winner's end; a writer that
		// retries its own create is told it was its own.
		if out[0].last == first+8 {
			if _, _, err := a.PutSegment(ctx, "e1", "inc1", first+9, first+9, segment(first+9, first+9, "a")); err != nil {
				t.Fatal(err)
			}
		}
		winner := a
		if out[1].ours {
			winner = b
		}
		if last, ours, err := winner.PutSegment(ctx, "e1", "inc1", first, out[0].last, nil); err != nil || !ours || last != out[0].last {
			t.Fatalf("own retry: last %d ours %v err %v", last, ours, err)
		}
	}
	if err := a.AdvanceManifest(ctx, "e1", "inc1", 0); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	h, err := a.WriteState(ctx, &buf, "e1", "")
	if err != nil {
		t.Fatal(err)
	}
	if h.Seq != 200 {
		t.Fatalf("chain ends at %d, want 200", h.Seq)
	}
}

func TestAGapInTheChainFailsTheRestoreLoudly(t *testing.T) {
	s3 := testenv.StartS3(t)
	st := open(t, s3, "gap")
	ctx := context.Background()
	for _, r := range [][2]uint64{{1, 5}, {6, 9}, {12, 20}} {
		if _, _, err := st.PutSegment(ctx, "e1", "inc1", r[0], r[1], segment(r[0], r[1], "x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.AdvanceManifest(ctx, "e1", "inc1", 0); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, err := st.WriteState(ctx, &buf, "e1", "")
	if !errors.Is(err, s3store.ErrGap) || !strings.Contains(err.Error(), "10..11") {
		t.Fatalf("restore over a gap: %v, want ErrGap naming 10..11", err)
	}
	if buf.Len() != 0 {
		t.Fatal("a document was started before the gap was found")
	}
	// Compaction moves the manifest forward; a restore then starts at the
	// snapshot and still sees every key.
	if _, _, err := st.PutSegment(ctx, "e1", "inc1", 10, 11, segment(10, 11, "y")); err != nil {
		t.Fatal(err)
	}
	seq, _, err := st.Compact(ctx, "e1", "inc1")
	if err != nil || seq != 20 {
		t.Fatalf("compact: %d %v", seq, err)
	}
	m, _, err := st.ReadManifest(ctx, "e1", "inc1")
	if err != nil || m.SnapSeq != 20 {
		t.Fatalf("manifest %+v %v", m, err)
	}
	buf.Reset()
	if h, err := st.WriteState(ctx, &buf, "e1", ""); err != nil || h.Seq != 20 || !strings.Contains(buf.String(), `"key":"k2"`) {
		t.Fatalf("after compaction: %+v %v %s", h, err, buf.String())
	}
}
