package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// repoTypes are the phone's and the watcher's types from the repository's descriptor set.
func repoTypes(t testing.TB) (fallbackResolver, *messageTypes, *watchTypes) {
	t.Helper()
	path := findDescriptors()
	resolver, err := loadFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := phoneTypes(resolver, path)
	if err != nil {
		t.Fatal(err)
	}
	wt, err := loadWatchTypes(resolver, path, true)
	if err != nil {
		t.Fatal(err)
	}
	return resolver, pt, wt
}

func message(t testing.TB, r fallbackResolver, name string) *dynamicpb.Message {
	t.Helper()
	d, err := r.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		t.Fatal(err)
	}
	return dynamicpb.NewMessage(d.(protoreflect.MessageDescriptor))
}

func set(m protoreflect.Message, name string, v protoreflect.Value) {
	m.Set(m.Descriptor().Fields().ByName(protoreflect.Name(name)), v)
}

// pointsEvent is a RunEvent with the given seqs, each taken at unix µs base + seq.
func pointsEvent(t testing.TB, r fallbackResolver, runID string, base int64, seqs ...uint32) *dynamicpb.Message {
	ev := message(t, r, "runtrack.v1.RunEvent")
	set(ev, "run_id", protoreflect.ValueOfString(runID))
	tp := ev.Mutable(ev.Descriptor().Fields().ByName("points")).Message()
	list := tp.Mutable(tp.Descriptor().Fields().ByName("points")).List()
	for _, seq := range seqs {
		p := list.NewElement().Message()
		set(p, "seq", protoreflect.ValueOfUint32(seq))
		set(p, "latitude", protoreflect.ValueOfFloat64(48.85))
		at := time.UnixMicro(base + int64(seq))
		ts := p.Mutable(p.Descriptor().Fields().ByName("time")).Message()
		set(ts, "seconds", protoreflect.ValueOfInt64(at.Unix()))
		set(ts, "nanos", protoreflect.ValueOfInt32(int32(at.Nanosecond())))
		list.Append(protoreflect.ValueOfMessage(p))
	}
	return ev
}

func stateEvent(t testing.TB, r fallbackResolver, runID, state string) *dynamicpb.Message {
	ev := message(t, r, "runtrack.v1.RunEvent")
	set(ev, "run_id", protoreflect.ValueOfString(runID))
	sc := ev.Mutable(ev.Descriptor().Fields().ByName("state")).Message()
	enum := sc.Descriptor().Fields().ByName("state").Enum()
	set(sc, "state", protoreflect.ValueOfEnum(enum.Values().ByName(protoreflect.Name(state)).Number()))
	set(sc, "reason", protoreflect.ValueOfString("because"))
	return ev
}

func TestRunEventsAreDecodedFromTheWire(t *testing.T) {
	r, _, wt := repoTypes(t)
	base := time.Date(2026, 5, 1, 7, 0, 0, 0, time.UTC).UnixMicro()
	b, err := proto.Marshal(pointsEvent(t, r, "run", base, 7, 8, 300))
	if err != nil {
		t.Fatal(err)
	}
	var ev runEvent
	// One buffer, and the same bytes split over three (as a frame may arrive).
	codec := watchCodec{wt}
	for _, data := range []mem.BufferSlice{
		{mem.SliceBuffer(b)},
		{mem.SliceBuffer(b[:3]), mem.SliceBuffer(b[3:10]), mem.SliceBuffer(b[10:])},
	} {
		if err := codec.Unmarshal(data, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.kind != eventPoints || len(ev.seqs) != 3 || ev.seqs[0] != 7 || ev.seqs[2] != 300 {
			t.Fatalf("decoded %+v", ev)
		}
		for i, seq := range ev.seqs {
			if ev.timeUs[i] != base+int64(seq) {
				t.Fatalf("seq %d at %d, want %d", seq, ev.timeUs[i], base+int64(seq))
			}
		}
	}
	for name, want := range map[string]int32{"LIVE": 1, "STOPPED": wt.stopped, "DELETED": wt.deleted} {
		b, err := proto.Marshal(stateEvent(t, r, "run", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := wt.decode(b, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.kind != eventState || ev.state != want || len(ev.seqs) != 0 {
			t.Fatalf("%s decoded as %+v", name, ev)
		}
	}
	if wt.stopped < 0 || wt.deleted < 0 || wt.stateNames[wt.stopped] != "STOPPED" {
		t.Fatalf("LiveState not read: %+v", wt.stateNames)
	}
	if err := wt.decode(b[:len(b)-1], &ev); err == nil {
		t.Fatal("a truncated event decoded")
	}
}

func TestHoldCountsDuplicatesAndTheContiguousPrefix(t *testing.T) {
	s := &watchStats{failures: map[string]int64{}}
	s.window.Store(new(histogram))
	w := &watcher{openedUs: 1000, recv: make([]int64, 0, 2)}
	hold := func(now int64, seqs ...uint32) {
		ev := runEvent{kind: eventPoints, seqs: seqs, timeUs: make([]int64, len(seqs))}
		for i := range seqs {
			ev.timeUs[i] = now - 500
		}
		w.hold(&ev, now, s)
	}
	hold(2000, 1, 2)
	hold(3000, 4, 2, 0)
	if w.contig.Load() != 2 || w.duplicates != 1 || w.unexpected != 1 || s.delivered.Load() != 3 {
		t.Fatalf("contig %d duplicates %d unexpected %d delivered %d", w.contig.Load(), w.duplicates, w.unexpected,
			s.delivered.Load())
	}
	hold(4000, 3)
	if w.contig.Load() != 4 || w.recv[2] != 4000 || w.recv[3] != 3000 {
		t.Fatalf("contig %d recv %v", w.contig.Load(), w.recv)
	}
	if got := s.window.Load().quantileMs(1); got != 0.5 {
		t.Fatalf("fix to watcher %g ms, want 0.5", got)
	}
}

func TestAnalyseFindsGapsDuplicatesAndTheLastWatcher(t *testing.T) {
	const s = int64(1_000_000)
	// Run 0: points 1..4 taken at 10, 11, 12, 13 s; complete. Run 1: its phone failed after 2.
	runs := []runTruth{
		{fixes: []int64{10 * s, 11 * s, 12 * s, 13 * s}, last: 4, complete: true},
		{fixes: []int64{10 * s, 11 * s, 12 * s}, last: 2},
	}
	ms := int64(1000)
	ws := []following{
		// Opened at 10.5 s: point 1 is backlog; 2..4 live, 100 ms each; one duplicate.
		{run: 0, openedUs: 10*s + 500*ms, recv: []int64{10*s + 600*ms, 11*s + 100*ms, 12*s + 100*ms, 13*s + 100*ms},
			duplicates: 1},
		// Opened at 9 s: misses point 3; point 4 at 900 ms; a seq beyond the last.
		{run: 0, openedUs: 9 * s, recv: []int64{10*s + 200*ms, 11*s + 300*ms, 0, 13*s + 900*ms, 14 * s}},
		// Never opened: not counted.
		{run: 0, recv: []int64{1}},
		// Run 1's watcher: its points count as delivered, its gaps are not checked.
		{run: 1, openedUs: 9 * s, recv: []int64{10*s + 100*ms}},
	}
	a := analyse(runs, ws, 11*s, 13*s) // the steady window holds points 2 and 3
	check := func(name string, got, want int64) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	check("delivered", a.Delivered, 4+3+1)
	check("backlog", a.DeliveredBacklog, 1)
	check("live", a.DeliveredLive, 7)
	check("duplicates", a.Duplicates, 1)
	check("unexpected", a.Unexpected, 1)
	check("watchers checked", int64(a.WatchersChecked), 2)
	check("expected", a.Expected, 8)
	check("missed", a.Missed, 1)
	check("watchers with gaps", int64(a.WatchersWithGaps), 1)
	check("runs checked", int64(a.RunsChecked), 1)
	check("runs incomplete", int64(a.RunsIncomplete), 1)
	// Per delivery: 200, 100, 300, 100, 100, 900 (run 0) and 100 (run 1).
	if a.FixToWatcherMs.Count != 7 || a.FixToWatcherMs.Max != 900 {
		t.Errorf("fix to watcher %+v", a.FixToWatcherMs)
	}
	// Steady (points 2, 3): 100, 300, 100.
	if a.FixToWatcherSteadyMs.Count != 3 || a.FixToWatcherSteadyMs.Max != 300 {
		t.Errorf("steady fix to watcher %+v", a.FixToWatcherSteadyMs)
	}
	// Every watcher, per point of run 0: 1 -> 200 (the first watcher opened after it), 2 -> 300,
	// 3 -> 100 (held by one), 4 -> 900; run 1: 1 -> 100, 2 -> none held.
	if a.FixToEveryWatcherMs.Count != 5 || a.FixToEveryWatcherMs.Max != 900 {
		t.Errorf("fix to every watcher %+v", a.FixToEveryWatcherMs)
	}
	if a.FixToEveryWatcherSteadyMs.Count != 2 || a.FixToEveryWatcherSteadyMs.Max != 300 {
		t.Errorf("steady fix to every watcher %+v", a.FixToEveryWatcherSteadyMs)
	}
}

// fakeTracking plays Envoy and both services for the scenario test: it stores what the phones send,
// hands out live links, and serves WatchRun by polling the stored points every 30 ms.
type fakeTracking struct {
	t        *testing.T
	resolver fallbackResolver

	mu      sync.Mutex
	seqs    map[string][]uint32 // run -> the seqs received, in order
	stopped map[string]bool
	owners  map[string]string
}

func (f *fakeTracking) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	md, _ := metadata.FromIncomingContext(stream.Context())
	auth := strings.Join(md.Get("authorization"), "")
	switch method {
	case "/runtrack.v1.TrackingService/RecordTrack":
		runID := ""
		var n uint32
		for {
			req := message(f.t, f.resolver, "runtrack.v1.RecordTrackRequest")
			if err := stream.RecvMsg(req); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return err
			}
			if id := req.Get(req.Descriptor().Fields().ByName("run_id")).String(); id != "" {
				runID = id
			}
			list := req.Get(req.Descriptor().Fields().ByName("points")).List()
			f.mu.Lock()
			f.owners[runID] = auth
			for i := range list.Len() {
				p := list.Get(i).Message()
				f.seqs[runID] = append(f.seqs[runID], uint32(p.Get(p.Descriptor().Fields().ByName("seq")).Uint()))
				n++
			}
			f.mu.Unlock()
		}
		resp := message(f.t, f.resolver, "runtrack.v1.RecordTrackResponse")
		set(resp, "run_id", protoreflect.ValueOfString(runID))
		set(resp, "points_stored", protoreflect.ValueOfUint32(n))
		return stream.SendMsg(resp)
	case "/runtrack.v1.TrackingService/CreateLiveLink", "/runtrack.v1.SummaryService/StopRun":
		in := "runtrack.v1.CreateLiveLinkRequest"
		if strings.HasSuffix(method, "StopRun") {
			in = "runtrack.v1.StopRunRequest"
		}
		req := message(f.t, f.resolver, in)
		if err := stream.RecvMsg(req); err != nil {
			return err
		}
		runID := req.Get(req.Descriptor().Fields().ByName("run_id")).String()
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.owners[runID] != auth {
			return status.Error(codes.PermissionDenied, "not the owner")
		}
		if in == "runtrack.v1.StopRunRequest" {
			f.stopped[runID] = true
			return stream.SendMsg(message(f.t, f.resolver, "runtrack.v1.Run"))
		}
		link := message(f.t, f.resolver, "runtrack.v1.LiveLink")
		set(link, "run_id", protoreflect.ValueOfString(runID))
		set(link, "token", protoreflect.ValueOfString("link-"+runID))
		return stream.SendMsg(link)
	case "/runtrack.v1.TrackingService/WatchRun":
		req := message(f.t, f.resolver, "runtrack.v1.WatchRunRequest")
		if err := stream.RecvMsg(req); err != nil {
			return err
		}
		runID := req.Get(req.Descriptor().Fields().ByName("run_id")).String()
		if auth != "Bearer link-"+runID {
			return status.Error(codes.Unauthenticated, "no link")
		}
		if err := stream.SendMsg(stateEvent(f.t, f.resolver, runID, "LIVE")); err != nil {
			return err
		}
		sent := 0
		for {
			f.mu.Lock()
			seqs, stopped := f.seqs[runID][sent:], f.stopped[runID]
			f.mu.Unlock()
			if len(seqs) > 0 {
				// The points' time as the phones sent them is not kept here: "now" stands in.
				if err := stream.SendMsg(pointsEvent(f.t, f.resolver, runID, time.Now().UnixMicro(), seqs...)); err != nil {
					return err
				}
				sent += len(seqs)
			}
			if stopped {
				return stream.SendMsg(stateEvent(f.t, f.resolver, runID, "STOPPED"))
			}
			time.Sleep(30 * time.Millisecond)
		}
	}
	return status.Error(codes.Unimplemented, method)
}

// syncBuffer collects the phase markers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func TestTheScenarioAgainstAFakeServer(t *testing.T) {
	resolver, pt, wt := repoTypes(t)
	f := &fakeTracking{t: t, resolver: resolver, seqs: map[string][]uint32{},
		stopped: map[string]bool{}, owners: map[string]string{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer(grpc.UnknownServiceHandler(f.handle))
	go func() { _ = server.Serve(lis) }()
	defer server.Stop()

	markers := &syncBuffer{}
	c := watchConfig{
		address: lis.Addr().String(), runs: 4, watchers: 12, interval: 100 * time.Millisecond,
		ramp: 200 * time.Millisecond, settle: 200 * time.Millisecond, baseline: 300 * time.Millisecond,
		watchRamp: 200 * time.Millisecond, steady: time.Second, drain: 3 * time.Second, tick: 10 * time.Millisecond,
		phoneConns: 1, watchConns: 2, callConcurrency: 4, stopRuns: true, markers: markers,
	}
	tokens := []metadata.MD{metadata.Pairs("authorization", "Bearer a"), metadata.Pairs("authorization", "Bearer b")}
	r, err := watch(c, tokens, pt, wt)
	if err != nil {
		t.Fatal(err)
	}
	if r.Phones.StreamsOK != 4 || r.Phones.StreamsFailed != 0 || r.Links.OK != 4 || r.StopRun == nil || r.StopRun.OK != 4 {
		t.Fatalf("phones %+v links %+v stop %+v", r.Phones, r.Links, r.StopRun)
	}
	fig := r.WatcherFig
	if fig.Outcomes["ended"] != 12 || fig.SawStopped != 12 || fig.FirstNotState != 0 || !fig.AllCaughtUp {
		t.Fatalf("watchers %+v", fig)
	}
	a := r.Analysis
	if a.Missed != 0 || a.Duplicates != 0 || a.WatchersChecked != 12 || a.Expected != 3*r.Phones.PointsSent {
		t.Fatalf("analysis %+v (sent %d)", a, r.Phones.PointsSent)
	}
	if a.FixToWatcherSteadyMs.Count == 0 || a.FixToWatcherSteadyMs.Max > 500 {
		t.Fatalf("steady fix to watcher %+v", a.FixToWatcherSteadyMs)
	}
	var phases []string
	for _, line := range strings.Split(strings.TrimSpace(markers.b.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("marker %q: %v", line, err)
		}
		phases = append(phases, m["phase"].(string))
	}
	want := "phones_ramp baseline_start baseline_end links links_done watchers_ramp steady_start steady_mid" +
		" steady_end phones_end phones_done catch_up caught_up stop_runs stop_runs_done done"
	if got := strings.Join(phases, " "); got != want {
		t.Fatalf("phases\n%s\nwant\n%s", got, want)
	}
}

func BenchmarkDecodeRunEvent(b *testing.B) {
	r, _, wt := repoTypes(b)
	data, err := proto.Marshal(pointsEvent(b, r, "4b5c9f0e-5d1e-4a57-9a43-0c6f7b0f1a2d", time.Now().UnixMicro(), 42))
	if err != nil {
		b.Fatal(err)
	}
	codec := watchCodec{wt}
	var ev runEvent
	frame := mem.BufferSlice{mem.SliceBuffer(data)}
	b.ReportAllocs()
	for b.Loop() {
		if err := codec.Unmarshal(frame, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
