set terminal pngcairo size 1200,1260 font ",10"
set output "results/accuracy.png"
set multiplot layout 3,1
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.7 border -1
set ylabel "test accuracy (%)"
set yrange [0:105]
set xtics rotate by -25 scale 0
set key top left
set grid ytics
set title "repair: held-out accuracy after 500 more steps (mean ± std over seeds)"
plot "results/bars-repair.dat" using 2:3:xtic(1) title "greedy", "" using 4:5 title "sampled, T=1"
set title "walks: held-out accuracy after 500 more steps (mean ± std over seeds)"
plot "results/bars-walks.dat" using 2:3:xtic(1) title "greedy", "" using 4:5 title "sampled, T=1"
set title "arithmetic: held-out accuracy after 500 more steps (mean ± std over seeds)"
plot "results/bars-arithmetic.dat" using 2:3:xtic(1) title "greedy", "" using 4:5 title "sampled, T=1"
unset multiplot
reset
set terminal pngcairo size 1200,1260 font ",10"
set output "results/curves.png"
set multiplot layout 3,1
set xlabel "training steps"
set ylabel "validation accuracy, greedy (%)"
set yrange [0:105]
set key outside right
set grid
set title "repair"
plot "results/curves-repair.dat" index 0 using 1:2 with linespoints title "SFT", "results/curves-repair.dat" index 1 using 1:2 with linespoints title "SeqKD", "results/curves-repair.dat" index 2 using 1:2 with linespoints title "supervised KD (lambda 0, FKL)", "results/curves-repair.dat" index 3 using 1:2 with linespoints title "supervised KD (lambda 0, RKL)", "results/curves-repair.dat" index 4 using 1:2 with linespoints title "mixed (lambda 0.5, FKL)", "results/curves-repair.dat" index 5 using 1:2 with linespoints title "on-policy FKL", "results/curves-repair.dat" index 6 using 1:2 with linespoints title "on-policy RKL", "results/curves-repair.dat" index 7 using 1:2 with linespoints title "on-policy JSD(0.1)", "results/curves-repair.dat" index 8 using 1:2 with linespoints title "on-policy JSD(0.5)", "results/curves-repair.dat" index 9 using 1:2 with linespoints title "on-policy JSD(0.9)", "results/curves-repair.dat" index 10 using 1:2 with linespoints title "supervised KD (FKL) on injected slips", "results/curves-repair.dat" index 11 using 1:2 with linespoints title "supervised KD (RKL) on injected slips"
set title "walks"
plot "results/curves-walks.dat" index 0 using 1:2 with linespoints title "SFT", "results/curves-walks.dat" index 1 using 1:2 with linespoints title "SeqKD", "results/curves-walks.dat" index 2 using 1:2 with linespoints title "supervised KD (lambda 0, FKL)", "results/curves-walks.dat" index 3 using 1:2 with linespoints title "supervised KD (lambda 0, RKL)", "results/curves-walks.dat" index 4 using 1:2 with linespoints title "mixed (lambda 0.5, FKL)", "results/curves-walks.dat" index 5 using 1:2 with linespoints title "on-policy FKL", "results/curves-walks.dat" index 6 using 1:2 with linespoints title "on-policy RKL", "results/curves-walks.dat" index 7 using 1:2 with linespoints title "on-policy JSD(0.1)", "results/curves-walks.dat" index 8 using 1:2 with linespoints title "on-policy JSD(0.5)", "results/curves-walks.dat" index 9 using 1:2 with linespoints title "on-policy JSD(0.9)"
set title "arithmetic"
plot "results/curves-arithmetic.dat" index 0 using 1:2 with linespoints title "SFT", "results/curves-arithmetic.dat" index 1 using 1:2 with linespoints title "SeqKD", "results/curves-arithmetic.dat" index 2 using 1:2 with linespoints title "supervised KD (lambda 0, FKL)", "results/curves-arithmetic.dat" index 3 using 1:2 with linespoints title "supervised KD (lambda 0, RKL)", "results/curves-arithmetic.dat" index 4 using 1:2 with linespoints title "mixed (lambda 0.5, FKL)", "results/curves-arithmetic.dat" index 5 using 1:2 with linespoints title "on-policy FKL", "results/curves-arithmetic.dat" index 6 using 1:2 with linespoints title "on-policy RKL", "results/curves-arithmetic.dat" index 7 using 1:2 with linespoints title "on-policy JSD(0.1)", "results/curves-arithmetic.dat" index 8 using 1:2 with linespoints title "on-policy JSD(0.5)", "results/curves-arithmetic.dat" index 9 using 1:2 with linespoints title "on-policy JSD(0.9)"
unset multiplot
reset
set terminal pngcairo size 800,560 font ",10"
set output "results/rl.png"
set title "RL + GKD on arithmetic: reward against divergence to the teacher"
set xlabel "JSD(0.5) to the teacher on the test set (lower: closer)"
set ylabel "test reward (%)"
set yrange [0:105]
set grid
set key bottom right
set offsets graph 0.1, graph 0.1, 2, 2
plot "results/rl.dat" using 2:3 with linespoints pt 7 title "sampled, T=1", "" using 2:4 with linespoints pt 5 title "greedy", "" using 2:3:(sprintf("alpha %s", stringcolumn(1))) with labels offset 0,1 notitle
