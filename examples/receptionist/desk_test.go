package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/lkagent/lkagent/job/jobtest"
)

// Conversations with the desk, without a room: each turn is what the
// caller says and a piece of the reply.
func TestDeskConversations(t *testing.T) {
	type turn struct{ say, want string }
	for _, tc := range []struct {
		name   string
		turns  []turn
		booked []Appointment
	}{
		{"questions", []turn{
			{"When are you open?", "Monday to Friday, 8am to 6pm"},
			{"What's your address?", "12 Harbour Street"},
			{"Where can I park my car?", "free parking"},
			{"How much is a cleaning?", "$90"},
			{"Do you sell toothbrushes", "Sorry, I didn't catch that"},
		}, nil},
		{"booking step by step", []turn{
			{"I'd like to book an appointment", "Which day suits you"},
			{"Saturday?", "closed at weekends"},
			{"hmm", "Which day would you like"},
			{"Thursday please", "morning or the afternoon on Thursday"},
			{"whenever", "Morning or afternoon on Thursday"},
			{"In the afternoon", "booked for Thursday afternoon"},
			{"what are your opening hours", "8am to 6pm"},
		}, []Appointment{{"Thursday", "afternoon"}}},
		{"booking in one go", []turn{
			{"Can you book me in on Monday?", "morning or the afternoon on Monday"},
			{"Morning.", "booked for Monday morning"},
		}, []Appointment{{"Monday", "morning"}}},
		{"booking cancelled", []turn{
			{"I need to see a dentist", "Which day"},
			{"never mind", "won't book anything"},
			{"Friday", "Sorry, I didn't catch that"}, // no longer booking
		}, nil},
		{"goodbye mid-booking", []turn{
			{"book", "Which day"},
			{"Thanks, bye!", "Goodbye, and thank you for calling Harbour Dental"},
			{"Tuesday", "Sorry"},
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewDesk("Harbour Dental")
			for _, tr := range tc.turns {
				if got := d.Reply(tr.say); !strings.Contains(got, tr.want) {
					t.Fatalf("%q: reply %q, want it to contain %q", tr.say, got, tr.want)
				}
			}
			if got := d.Booked(); !slices.Equal(got, tc.booked) {
				t.Fatalf("booked %v, want %v", got, tc.booked)
			}
		})
	}
}

func TestDeskGreeting(t *testing.T) {
	d := NewDesk("Harbour Dental")
	if got := d.Greeting("Pat"); !strings.HasPrefix(got, "Hello Pat, welcome to Harbour Dental!") || !strings.Contains(got, "book") {
		t.Fatalf("greeting %q", got)
	}
	if got := d.Greeting(""); !strings.HasPrefix(got, "Hello, welcome") {
		t.Fatalf("greeting without a name %q", got)
	}
	if d.SaidGoodbye() {
		t.Fatal("goodbye before anything was said")
	}
	d.Reply("goodbye")
	if !d.SaidGoodbye() {
		t.Fatal("no goodbye recorded")
	}
}

// The handler rejects metadata it cannot read before joining anything:
// the job fails and says why.
func TestHandlerRejectsBadMetadata(t *testing.T) {
	res := jobtest.New(jobtest.Options{Metadata: "caller=pat"}).Run(newHandler("Harbour Dental"))
	if res.Outcome == nil || !strings.Contains(res.Outcome.Error(), `want JSON like {"caller":"identity"}`) {
		t.Fatalf("outcome %v, want a failure explaining the metadata", res.Outcome)
	}
	// Good metadata gets past it, to the room that a test job has not.
	res = jobtest.New(jobtest.Options{Metadata: `{"caller":"pat"}`}).Run(newHandler("Harbour Dental"))
	if res.Outcome == nil || !strings.Contains(res.Outcome.Error(), "Connect needs a URL") {
		t.Fatalf("outcome %v, want Connect's failure", res.Outcome)
	}
}
